"""The demo world's next-day landing (``bundlecast generate --next-day``): what the steady-state
benchmark and any multi-day run land after the generated history. No Spark."""
from __future__ import annotations

import pandas as pd
import pytest

from bundlecast.jobs.tools.demo_world import generate
from bundlecast.jobs.tools.next_day import land_next_day, read_landed

DT, NEXT = "2026-11-20", "2026-11-21"


def frame(raw, dataset, dt):
    files = sorted((raw / dataset / f"dt={dt}").glob("*"))
    return pd.concat([read_landed(p) for p in files], ignore_index=True) if files else pd.DataFrame()


@pytest.fixture(scope="module", params=["jsonl", "parquet"])
def landed(request, tmp_path_factory):
    raw = tmp_path_factory.mktemp(f"nextday-{request.param}") / "raw"
    generate(raw, raw.parent / "truth.json", "tiny", 3, DT, formats={"events": request.param})
    new_dt, rows = land_next_day(raw, DT)
    return raw, new_dt, rows


def day_of(col):
    ts = pd.to_datetime(col, utc=True, format="ISO8601") if col.dtype == object else col
    return ts.dt.tz_convert("UTC").dt.strftime("%Y-%m-%d") if ts.dt.tz is not None else ts.dt.strftime("%Y-%m-%d")


def test_behaviour_is_the_last_day_one_day_later_with_new_ids(landed):
    raw, new_dt, rows = landed
    assert new_dt == NEXT
    old, new = frame(raw, "events", DT), frame(raw, "events", NEXT)
    last = old[day_of(old.event_ts) == "2026-11-19"]
    assert len(new) == len(last) == rows["events"] > 0
    assert set(day_of(new.event_ts)) == {DT}
    assert new.event_id.is_unique and not set(new.event_id) & set(old.event_id)
    assert not set(new.session_id) & set(old.session_id)
    assert sorted(new.user_id) == sorted(last.user_id)
    orders, lines = frame(raw, "orders", NEXT), frame(raw, "order_lines", NEXT)
    assert len(orders) == rows["orders"] > 0 and set(day_of(orders.order_ts)) == {DT}
    assert set(lines.order_id) == set(orders.order_id)  # every new line belongs to a new order
    assert not set(orders.order_id) & set(frame(raw, "orders", DT).order_id)


def test_snapshots_move_on_and_dimensions_stay(landed):
    raw, _, _ = landed
    inventory = frame(raw, "inventory", NEXT)
    before = frame(raw, "inventory", DT)
    assert inventory.snapshot_ts.nunique() == 1
    assert inventory.snapshot_ts.iloc[0] == before.snapshot_ts.max() + pd.Timedelta(days=1)
    weather = frame(raw, "weather", NEXT)
    assert set(weather.loc[weather.date == DT, "is_forecast"]) == {"False"}
    assert set(weather.loc[weather.date > DT, "is_forecast"]) == {"True"}
    routes, planned = frame(raw, "routes", NEXT), frame(raw, "routes", DT)
    assert set(routes.route_date) == {"2026-11-23"} and not set(routes.route_id) & set(planned.route_id)
    assert routes.shift_start.str.startswith("2026-11-23").all()
    for dataset in ("sites", "warehouses", "items", "users"):
        assert [p.read_bytes() for p in sorted((raw / dataset / f"dt={NEXT}").glob("*"))] == \
               [p.read_bytes() for p in sorted((raw / dataset / f"dt={DT}").glob("*"))]
    for dataset in ("reviews", "feedback", "calendar_events", "competitor_prices"):
        assert not (raw / dataset / f"dt={NEXT}").exists()


def test_landing_the_next_day_twice_writes_the_same_files(landed):
    raw, _, _ = landed
    files = {p: p.read_bytes() for p in raw.rglob(f"dt={NEXT}/*")}
    land_next_day(raw, DT)
    assert {p: p.read_bytes() for p in raw.rglob(f"dt={NEXT}/*")} == files
