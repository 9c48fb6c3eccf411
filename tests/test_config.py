"""Configuration: overlays, environment references, state directory, catalog consistency."""

import pytest

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import PROJECT_ROOT, deep_merge, load_config
from bundlecast.jobs.core.errors import ConfigError


def test_overlay_merges_nested_keys():
    merged = deep_merge({"spark": {"master": "local[*]", "driver_memory": "4g"}, "x": [1]},
                        {"spark": {"master": "spark://m:7077"}, "x": [2]})
    assert merged == {"spark": {"master": "spark://m:7077", "driver_memory": "4g"}, "x": [2]}


def test_local_config_puts_all_state_under_home(tmp_path):
    cfg = load_config("local", tmp_path, environ={})
    for value in (cfg["storage"]["raw"], cfg["storage"]["warehouse"], cfg["spark"]["jar_cache"],
                  cfg["airflow"]["home"], cfg["quality"]["gx_project"], cfg["exports"]["target"]):
        assert str(tmp_path) in value
    assert cfg["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert cfg["spark"]["master"] == "local[*]"


def test_two_homes_are_two_worlds(tmp_path):
    a = load_config("local", tmp_path / "a", environ={})
    b = load_config("local", tmp_path / "b", environ={})
    assert a["storage"]["warehouse"] != b["storage"]["warehouse"]


PROD_KEYS = {"BUNDLECAST_LINK_SIGNING_KEY": "k" * 40, "BUNDLECAST_DISPATCH_FEED_KEY": "d" * 40}


def test_prod_overlay_resolves_from_environment(tmp_path):
    cfg = load_config("prod", tmp_path, environ={"BUNDLECAST_EXPORT_TARGET": "s3://exports/v1", **PROD_KEYS})
    assert cfg["spark"]["master"] == "spark://spark-master:7077"
    assert cfg["exports"]["target"] == "s3://exports/v1"
    assert cfg["storage"]["s3_endpoint_url"] == "http://minio:9000"
    assert cfg["mlflow"]["tracking_uri"] == "http://mlflow:5000"
    assert cfg["storage"]["raw"] == f"{tmp_path}/raw"  # default with {home} inside ${...:-...}


def test_unknown_environment_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown BUNDLECAST_ENV 'staging'"):
        load_config("staging", tmp_path, environ={})


def test_missing_secret_without_default_is_reported(tmp_path):
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    (conf / "base" / "config.yaml").write_text("db:\n  password: ${DB_PASSWORD}\n")
    (conf / "local" / "config.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="DB_PASSWORD"):
        load_config("local", tmp_path, environ={}, conf_dir=conf)
    assert load_config("local", tmp_path, environ={"DB_PASSWORD": "s3cret"}, conf_dir=conf)["db"]["password"] == "s3cret"


def test_no_secrets_committed_in_conf():
    for path in (PROJECT_ROOT / "conf").rglob("*.yaml"):
        text = path.read_text().lower()
        for word in ("password:", "secret_access_key", "aws_secret"):
            assert word not in text, f"{path} looks like it holds a secret"


def test_catalog_silver_tables_follow_the_contract():
    datasets = catalog.datasets()
    for name, spec in datasets.items():
        table = catalog.table(name)
        assert table.layer == "silver"
        assert table.keys == spec.keys
        assert [c.name for c in table.columns] == spec.column_names + ["dt", "_source_file"]
    for table in catalog.tables().values():
        assert table.location and table.keys, table.name


def test_references_point_to_earlier_datasets():
    order = list(catalog.datasets())
    for name, spec in catalog.datasets().items():
        for ref in spec.refs:
            assert order.index(ref.dataset) < order.index(name), f"{name} references {ref.dataset} loaded later"
            ref_cols = [c.name for c in catalog.dataset(ref.dataset).columns]
            assert set(ref.ref_columns) <= set(ref_cols)


def test_contract_markdown_is_in_sync():
    committed = (PROJECT_ROOT / "conf" / "CONTRACT.md").read_text()
    assert committed.strip() == catalog.contract_markdown().strip(), "run: bundlecast contract > conf/CONTRACT.md"


def test_code_names_tables_not_paths():
    offenders = []
    for path in list((PROJECT_ROOT / "jobs").rglob("*.py")) + list((PROJECT_ROOT / "dags").rglob("*.py")):
        text = path.read_text()
        for fragment in ("silver/", "ops/quarantine", "/work/", "/tmp/"):
            if fragment in text:
                offenders.append(f"{path.name}: {fragment}")
    assert not offenders


def test_demo_world_is_deterministic_for_its_seed(tmp_path):
    """Two generations with one seed give byte-identical raw files; another seed does not."""
    import hashlib

    from bundlecast.jobs.tools.demo_world import generate

    def digest(root):
        return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(tmp_path / name / "raw", tmp_path / name / "truth.json", "tiny", seed, "2026-11-20")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


@pytest.mark.parametrize("keys, message", [
    ({}, "secret secrets.link_signing_key is missing: set BUNDLECAST_LINK_SIGNING_KEY"),
    ({**PROD_KEYS, "BUNDLECAST_LINK_SIGNING_KEY": "bundlecast-dev-secret"}, "is a known default"),
    ({**PROD_KEYS, "BUNDLECAST_DISPATCH_FEED_KEY": "local-development-dispatch-key-not-for-production"},
     "secrets.dispatch_feed_key is a known default"),
    ({**PROD_KEYS, "BUNDLECAST_LINK_SIGNING_KEY": "short"}, "shorter than 32 characters"),
])
def test_prod_refuses_to_start_without_a_real_secret(tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("prod", tmp_path, environ=keys)
    assert "\n" not in str(err.value)


def test_local_development_has_working_keys(tmp_path):
    cfg = load_config("local", tmp_path, environ={})
    assert all(len(v) >= 32 for v in cfg["secrets"].values())


def test_the_state_directory_overlay_is_merged_last_and_seen_when_it_changes(tmp_path, monkeypatch):
    """BUNDLECAST_HOME/conf/config.yaml changes one setting for that state only (the way
    ``bundlecast replay thresholds`` writes thresholds), and a running process sees a new one."""
    from bundlecast.jobs.core import config as config_module

    overlay = tmp_path / "conf" / "config.yaml"
    overlay.parent.mkdir()
    overlay.write_text("proactive:\n  category_thresholds: {grocery/coffee: 0.55}\n")
    cfg = load_config("local", tmp_path, environ={})
    assert cfg["proactive"]["category_thresholds"]["grocery/coffee"] == 0.55
    assert cfg["proactive"]["threshold"] == load_config("local", tmp_path / "other", environ={})["proactive"]["threshold"]
    monkeypatch.setenv("BUNDLECAST_HOME", str(tmp_path))
    assert config_module.config()["proactive"]["category_thresholds"]["grocery/coffee"] == 0.55
    overlay.write_text("proactive:\n  category_thresholds: {grocery/coffee: 0.8}\n")
    import os

    os.utime(overlay, ns=(1, overlay.stat().st_mtime_ns + 10**9))  # a later write, even on a coarse clock
    assert config_module.config()["proactive"]["category_thresholds"]["grocery/coffee"] == 0.8
    overlay.write_text("proactive: [not, a, mapping")
    os.utime(overlay, ns=(1, overlay.stat().st_mtime_ns + 2 * 10**9))
    with pytest.raises(ConfigError, match="invalid YAML"):
        config_module.config()
