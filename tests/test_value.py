"""User value on the `test` demo world (horizon shortened to 14 days: the world has 60):
the model and the "last period repeats" baseline on the same users, the table, the gate."""
from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def value_cfg(test_world):
    cfg = copy.deepcopy(test_world["cfg"])
    cfg["value"].update(horizon_days=14, model_name="bundlecast-user-value-test")
    return cfg


def test_user_value_beats_the_baseline_and_is_written(spark, test_world, value_cfg):
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.value import job as value

    s = value.run(spark, test_world["date"], "value-1", value_cfg, progress=lambda m: None)
    m, b, std = s.metrics["model"], s.metrics["baseline"], s.metrics["bgnbd"]
    print({name: {k: round(v, 3) for k, v in x.items()} for name, x in s.metrics.items()})
    assert m["mae"] < b["mae"] and m["spearman"] > b["spearman"]
    assert std["mae"] < b["mae"]  # the standard BG/NBD x Gamma-Gamma beats repeating the last period
    beats_standard = m["mae"] < std["mae"]
    assert s.labels["promoted"] == "true" and "no champion yet" in s.labels["decision"]  # bootstrap
    assert ("FAILS" in s.labels["decision"]) != beats_standard
    rows = read_table(spark, "user_value", value_cfg).toPandas()
    assert len(rows) == s.counts["users_scored"] > 100 and rows.user_id.is_unique
    assert (rows.predicted_value >= 0).all() and set(rows.value_decile) == set(range(1, 11))
    # The deciles separate users: the top decile's predicted spend is well above the mean.
    assert rows[rows.value_decile == 10].predicted_value.mean() > 1.5 * rows.predicted_value.mean()
    again = value.run(spark, test_world["date"], "value-2", value_cfg, progress=lambda m: None)
    assert len(read_table(spark, "user_value", value_cfg).toPandas()) == len(rows)  # same rows for the date
    # the gate promotes only a model that beats BG/NBD x Gamma-Gamma on spend MAE
    assert again.labels["promoted"] == str(beats_standard).lower()
    assert ("champion v" in again.labels["decision"]) if beats_standard else \
        ("not below BG/NBD" in again.labels["decision"])
    # Score mode (the replay between refits): no training, the champion's rows for the date,
    # the same as the training run's scoring with that champion.
    trained = read_table(spark, "user_value", value_cfg).toPandas().sort_values("user_id", ignore_index=True)
    scored = value.run(spark, test_world["date"], "value-3", value_cfg, progress=lambda m: None, mode="score")
    assert not scored.metrics and "model_version" not in scored.labels
    assert scored.labels["scored_with_version"] == again.labels["scored_with_version"]
    rows = read_table(spark, "user_value", value_cfg).toPandas().sort_values("user_id", ignore_index=True)
    assert len(rows) == len(trained) and (rows.run_id == "value-3").all()
    assert rows.predicted_value.tolist() == pytest.approx(trained.predicted_value.tolist())


def test_score_mode_without_a_champion_says_what_to_run(spark, test_world, value_cfg):
    from bundlecast.jobs.core.errors import BundlecastError
    from bundlecast.jobs.value import job as value

    cfg = copy.deepcopy(value_cfg)
    cfg["value"]["model_name"] = "bundlecast-user-value-never-trained"
    with pytest.raises(BundlecastError, match="no champion .*run `bundlecast value`"):
        value.run(spark, test_world["date"], "value-none", cfg, progress=lambda m: None, mode="score")


def test_too_little_history_is_skipped_with_one_message(spark, test_world, value_cfg):
    from bundlecast.jobs.value import job as value

    cfg = copy.deepcopy(value_cfg)
    cfg["value"]["horizon_days"] = 90  # 2 x 90 days needed, the world has 60
    said = []
    s = value.run(spark, test_world["date"], "value-short", cfg, progress=said.append)
    assert s.notes[0].startswith("too little history") and s.counts["users_scored"] == 0
    assert len(said) == 1 and "skipped" in said[0]
