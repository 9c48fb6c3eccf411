"""`bundlecast replay` on the tiny world, with two planted users whose needs are known.

Both planted users buy the same item every three days for a month; after the second
replay date one keeps buying it and the other stops. The replay runs as a user runs it (the
`bundlecast` command, its own state directory), is killed with SIGKILL once its first
replay date is done, and is started again: it resumes, the first date's rows are those it
wrote before the kill, and the planted users' shipments are scored right and wrong.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bundlecast.jobs.tools.next_day import write_landed
from bundlecast.jobs.tools.replay import history as hist

FIRST, SECOND = "2026-11-04", "2026-11-11"
BIN = Path(sys.executable).parent / "bundlecast"


def plant(raw: Path, out: Path) -> str:
    """The history at ``raw`` with users ``planted-right`` and ``planted-wrong`` added,
    written as a one-landing raw zone at ``out``; returns the planted item (site|item)."""
    h = hist.load(raw)
    d = h.datasets
    item = d["items"].iloc[0]
    users = d["users"].iloc[[0, 0]].assign(user_id=["planted-right", "planted-wrong"], signup_date="2026-09-01",
                                           proactive_opt_in="True")
    d["users"] = pd.concat([d["users"], users], ignore_index=True)
    orders, lines = [], []
    days = [date(2026, 10, 10) + timedelta(days=3 * i) for i in range(11)]  # ... 2026-11-09
    plan = {"planted-right": days + [date(2026, 11, 13), date(2026, 11, 16)], "planted-wrong": days}
    template = d["orders"].iloc[0]
    for user, when in plan.items():
        for k, day in enumerate(when):
            oid = f"P-{user}-{k}"
            orders.append({**template.to_dict(), "order_id": oid, "user_id": user, "site_id": item.site_id,
                           "order_ts": f"{day}T10:00:00Z", "status": "delivered"})
            lines.append(dict(order_id=oid, line_no="1", site_id=item.site_id, item_id=item.item_id, quantity="2",
                              unit_price=item.price, discount="0"))
    d["orders"] = pd.concat([d["orders"], pd.DataFrame(orders)], ignore_index=True)
    d["order_lines"] = pd.concat([d["order_lines"], pd.DataFrame(lines)], ignore_index=True)
    for name, frame in d.items():
        write_landed(frame, out / name / "dt=2026-11-20" / "history.csv")
    return f"{item.site_id}|{item.item_id}"


def delta(home: Path, location: str) -> pd.DataFrame:
    from deltalake import DeltaTable

    return DeltaTable(str(home / "warehouse" / location)).to_pandas()


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from bundlecast.jobs.tools.demo_world import generate

    src = tmp_path_factory.mktemp("replay-source")
    generate(src / "raw", src / "ground_truth.json", "tiny", 42, "2026-11-20")
    item = plant(src / "raw", src / "planted")
    home = tmp_path_factory.mktemp("replay-home")
    env = {**os.environ, "BUNDLECAST_HOME": str(home), "BUNDLECAST_SPARK_MASTER": "local[2]",
           "BUNDLECAST_SHUFFLE_PARTITIONS": "2"}
    cmd = [str(BIN), "replay", "--history", str(src / "planted"), "--start", FIRST, "--end", SECOND, "--every", "7d"]
    state = home / "replay" / "state.json"
    killed = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 1200
    while time.time() < deadline and killed.poll() is None:
        if state.exists() and json.loads(state.read_text())["done"] == [FIRST]:
            break
        time.sleep(2)
    assert killed.poll() is None, "the replay ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)  # the JVM too
    killed.wait()
    before = delta(home, "replay/outcomes")
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return dict(home=home, item=item, before=before, out=resumed.stdout, env=env)


def test_a_killed_replay_resumes_after_its_last_finished_date(replayed):
    assert "resuming: 1 of 2 replay dates done (last 2026-11-04)" in replayed["out"]
    assert f"replay date {FIRST} done" not in replayed["out"]  # not run again
    assert f"replay date {SECOND} done" in replayed["out"]
    after = delta(replayed["home"], "replay/outcomes")
    key = ["kind", "scorer", "category", "bin", "metric"]
    first = after[after.dt.astype(str) == FIRST].sort_values(key, ignore_index=True)
    assert set(replayed["before"].dt.astype(str)) == {FIRST}
    pd.testing.assert_frame_equal(first, replayed["before"].sort_values(key, ignore_index=True), check_like=True)
    assert set(after.dt.astype(str)) == {FIRST, SECOND}
    assert json.loads((replayed["home"] / "replay" / "state.json").read_text())["done"] == [FIRST, SECOND]


def test_the_planted_users_shipments_are_scored_correct_and_wrong(replayed):
    s = delta(replayed["home"], "replay/shipments")
    s = s[(s.dt.astype(str) == SECOND) & s.user_id.str.startswith("planted")].set_index("user_id")
    assert set(s.index) == {"planted-right", "planted-wrong"}, "the need model gave a planted user no bundle"
    item = replayed["item"]
    assert item in list(s["items"]["planted-right"]) and item in list(s["items"]["planted-wrong"])
    assert item in list(s.wanted["planted-right"])  # bought again within the horizon after delivery
    assert list(s.wanted["planted-wrong"]) == [] and s.wanted_items["planted-wrong"] == 0
    assert not s.correct["planted-wrong"]
    assert s.correct["planted-right"] == (s.wanted_items["planted-right"] == s.shipped_items["planted-right"])


def test_the_outcomes_cover_every_decision_and_the_report_has_its_plots(replayed):
    home = replayed["home"]
    o = delta(home, "replay/outcomes")
    assert {"need", "calibration", "need_date", "shipments", "forecast", "relationships"} <= set(o.kind)
    need = o[(o.kind == "need") & (o.metric == "recall_at_10")]
    assert set(need.scorer) == {"model", "topfreq", "tifuknn"}
    assert need.value.between(0, 1).all()
    summary = delta(home, "replay/summary")
    assert (summary.dates.max() == 2) and len(summary)
    page = (home / "replay" / "report.html").read_text()
    assert page.count("<img") == 2 and "association, not an" in page
    artifacts = {p.name for p in (home / "mlflow").rglob("*") if "replay" in p.parts}
    assert {"report.html", "precision_volume.png", "calibration.png", "summary.csv"} <= artifacts


def test_thresholds_from_the_replay_go_to_the_state_overlay_and_the_nightly_reads_them(replayed):
    home, env = replayed["home"], replayed["env"]
    done = subprocess.run([str(BIN), "replay", "thresholds", "--target-precision", "0.3", "--min-shipments", "3"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    overlay = yaml.safe_load((home / "conf" / "config.yaml").read_text())
    chosen = overlay["proactive"]["category_thresholds"]
    assert chosen and all(0 <= t <= 1 for t in chosen.values())
    seen = subprocess.run([sys.executable, "-c", "import json; from bundlecast.jobs.core.config import config; "
                           "print(json.dumps(config()['proactive']['category_thresholds']))"],
                          env=env, capture_output=True, text=True, check=True)
    merged = json.loads(seen.stdout)
    assert all(merged[c] == pytest.approx(t) for c, t in chosen.items())
    assert "grocery/dairy" in merged  # the configured ones without evidence stay
