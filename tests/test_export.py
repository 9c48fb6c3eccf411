"""Exports: files then manifest, checksums, idempotent re-export, local and S3 (moto)."""
import json

import boto3
import pytest

from bundlecast.jobs.core.storage import LocalStore, S3Store, open_store
from bundlecast.jobs.export.job import MANIFEST, export_table, verify


def test_local_export_writes_manifest_last_and_is_idempotent(tiny_world, cfg, tmp_path):
    store = LocalStore(str(tmp_path / "exports"))
    cfg_small = dict(cfg, exports=dict(cfg["exports"], rows_per_file=4000))
    first = export_table("events", tiny_world["date"], fmt="parquet", cfg=cfg_small, store=store)
    assert first["row_count"] == tiny_world["rows"]["events"]
    assert len(first["files"]) >= 2 and all(f["rows"] >= 4000 for f in first["files"][:-1])
    assert sum(f["rows"] for f in first["files"]) == first["row_count"]
    prefix = f"events/dt={tiny_world['date']}"
    assert verify(store.get(f"{prefix}/{MANIFEST}"), store, prefix)
    store.put(f"{prefix}/part-00099.parquet", b"stale")  # left over from an earlier, bigger export
    second = export_table("events", tiny_world["date"], fmt="parquet", cfg=cfg_small, store=store)
    assert [f["sha256"] for f in second["files"]] == [f["sha256"] for f in first["files"]]
    assert f"{prefix}/part-00099.parquet" not in store.list(prefix)


def test_jsonl_export_round_trips(tiny_world, cfg, tmp_path):
    store = LocalStore(str(tmp_path / "exports"))
    manifest = export_table("items", tiny_world["date"], fmt="jsonl", cfg=cfg, store=store)
    rows = store.get(f"items/dt={tiny_world['date']}/part-00000.jsonl").decode().splitlines()
    assert len(rows) == manifest["row_count"] == tiny_world["rows"]["items"]
    assert {"site_id", "item_id", "price"} <= set(json.loads(rows[0]))


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_s3_export_through_boto3(tiny_world, cfg, moto_endpoint, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="downstream")
    store = open_store("s3://downstream/bundlecast/v1", moto_endpoint)
    assert isinstance(store, S3Store)
    manifest = export_table("users", tiny_world["date"], cfg=cfg, store=store)
    assert manifest["location"] == f"s3://downstream/bundlecast/v1/users/dt={tiny_world['date']}"
    keys = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket="downstream")["Contents"]
    names = sorted(k["Key"] for k in keys)
    assert names == [f"bundlecast/v1/users/dt={tiny_world['date']}/{n}" for n in (MANIFEST, "part-00000.parquet")]
    assert verify(store.get(f"users/dt={tiny_world['date']}/{MANIFEST}"), store, f"users/dt={tiny_world['date']}")


def test_exports_carry_only_their_declared_columns(tiny_world, cfg, tmp_path):
    """Website and app get no demographics, home coordinates, costs or internal paths; the
    manifest states the consumers and what was left out."""
    import pyarrow.parquet as pq

    store = LocalStore(str(tmp_path / "exports"))
    for name, never in {"users": {"age", "gender", "lat", "lon", "_source_file"},
                        "items": {"cost", "_source_file"}}.items():
        manifest = export_table(name, tiny_world["date"], fmt="parquet", cfg=cfg, store=store)
        columns = set(pq.read_table(tmp_path / "exports" / name / f"dt={tiny_world['date']}" / "part-00000.parquet")
                      .column_names)
        assert columns == set(cfg["exports"]["tables"][name]["columns"]) and not columns & never, name
        assert set(manifest["omitted"]) >= never and manifest["consumers"] and manifest["schema_source"] == "exports.tables"
    manifest = export_table("events", tiny_world["date"], fmt="parquet", cfg=cfg, store=store)
    assert "_source_file" in manifest["omitted"] and manifest["schema_source"].startswith("catalog")


def test_declared_rounding_is_applied():
    import pyarrow as pa

    from bundlecast.jobs.export.job import _round
    schema = pa.schema([("stop", pa.string()), ("lat", pa.float64())])
    batch = pa.RecordBatch.from_arrays([pa.array(["a"]), pa.array([48.8566123456])], schema=schema)
    assert _round(batch, {"lat": 5}, schema).column(1).to_pylist() == [48.85661]


def test_every_configured_export_declares_existing_columns(cfg):
    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.export.job import export_schema
    for name, spec in cfg["exports"]["tables"].items():
        layout = export_schema(name, [c.name for c in catalog.table(name).columns], cfg["exports"])
        assert layout["columns"] == spec["columns"] and spec["consumers"], name
        assert not any(c.startswith("_") for c in layout["columns"]), name


def test_unknown_target_scheme_is_one_clear_error():
    from bundlecast.jobs.core.errors import ConfigError
    with pytest.raises(ConfigError, match="unsupported export target"):
        open_store("ftp://example/x")
