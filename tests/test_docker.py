"""The docker/ stack, as far as it can be checked without a Docker engine."""

import yaml

from bundlecast.jobs.core.config import PROJECT_ROOT, load_config

DOCKER = PROJECT_ROOT / "docker"


def test_compose_file_parses_and_has_the_stack():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = set(compose["services"])
    assert {"postgres", "minio", "spark-master", "spark-worker", "mlflow", "airflow-api-server",
            "airflow-scheduler", "airflow-dag-processor"} <= services
    scheduler = compose["services"]["airflow-scheduler"]
    assert scheduler["environment"]["BUNDLECAST_ENV"] == "prod"
    assert "postgresql" in scheduler["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_prod_overlay_resolves_with_the_compose_environment(tmp_path):
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    env = {k: str(v) for k, v in compose["services"]["airflow-scheduler"]["environment"].items()}
    cfg = load_config("prod", tmp_path, environ=env)
    assert cfg["spark"]["master"].startswith("spark://")
    assert cfg["exports"]["target"] == "s3://bundlecast-exports/v1"
    assert cfg["storage"]["s3_endpoint_url"] == "http://minio:9000"


def test_image_installs_the_way_make_does():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "make install" in dockerfile and "bundlecast setup" in dockerfile
    assert "requirements.lock" in dockerfile
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements.lock" in makefile


def test_lock_pins_every_dependency():
    lock = [l for l in (PROJECT_ROOT / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    assert len(lock) > 150 and all("==" in l for l in lock)
    names = {l.split("==")[0].lower().replace("_", "-") for l in lock}
    assert {"pyspark", "delta-spark", "apache-airflow", "mlflow", "great-expectations", "boto3", "moto"} <= names
