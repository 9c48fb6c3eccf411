"""The before/after digest: run ids and clocks do not count, values and rows do."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

SPEC = importlib.util.spec_from_file_location("table_digest", Path(__file__).resolve().parents[1] / "table_digest.py")
digest = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(digest)


def _write(home: Path, rows: list[dict]) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(home / "warehouse" / "gold" / "offers"), pd.DataFrame(rows), mode="overwrite")


def test_digest_ignores_run_ids_clocks_and_row_order_but_not_values(tmp_path):
    row = {"offer_id": "O1", "price": 1.0 / 3, "run_id": "r1", "updated_at": pd.Timestamp("2026-11-20 01:00")}
    other = {"offer_id": "O2", "price": 2.0, "run_id": "r1", "updated_at": pd.Timestamp("2026-11-20 01:00")}
    _write(tmp_path / "a", [row, other])
    _write(tmp_path / "b", [dict(other, run_id="r2"), dict(row, run_id="r2", updated_at=pd.Timestamp("2026-11-21"))])
    _write(tmp_path / "c", [row, dict(other, price=2.5)])
    a, b, c = (digest.digest_home(tmp_path / x) for x in "abc")
    assert a["gold/offers"]["columns"] == ["offer_id", "price"]
    assert digest.compare(a, b)[0].startswith("same") and digest.compare(a, c)[0].startswith("DIFF")
    assert digest.main(["--compare", *map(str, _dump(tmp_path, a, b))]) == 0


def test_rows_compare_floats_within_a_tolerance_and_nothing_else(tmp_path):
    """A float's last bits (a sum in another order) do not count, even across a rounding
    boundary of the digest; a real change of value, a row more or a text change do."""
    base = {"offer_id": "O1", "price": 0.00815050989499999, "scores": [0.25, 0.5], "run_id": "r1"}
    variants = {"same": dict(base, price=0.00815050989500001, run_id="r2"),
                "value": dict(base, price=0.0082), "nested": dict(base, scores=[0.3, 0.5]),
                "text": dict(base, offer_id="O2")}
    _write(tmp_path / "base", [base])
    for name, row in variants.items():
        _write(tmp_path / name, [row])
    rows = {name: digest.snapshot_home(tmp_path / name)["gold/offers"] for name in ["base", *variants]}
    assert digest.rows_differ(rows["base"], rows["same"]) is None
    assert digest.digest_home(tmp_path / "base") != digest.digest_home(tmp_path / "same")  # the boundary
    for name in ("value", "nested", "text"):
        assert digest.rows_differ(rows["base"], rows[name]), name
    _write(tmp_path / "more", [base, dict(base, offer_id="O3")])
    assert digest.rows_differ(rows["base"], digest.snapshot_home(tmp_path / "more")["gold/offers"]) == "1 rows, then 2"


def _dump(tmp_path: Path, *digests) -> list[Path]:
    import json

    paths = []
    for i, d in enumerate(digests):
        paths.append(tmp_path / f"d{i}.json")
        paths[-1].write_text(json.dumps(d))
    return paths
