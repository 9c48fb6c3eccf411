"""The docker/ stack, as far as it can be checked without a Docker engine."""

import yaml

from bundlecast.jobs.core.config import PROJECT_ROOT, load_config

DOCKER = PROJECT_ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_file_parses_and_has_the_stack():
    compose = _compose()
    services = set(compose["services"])
    assert {"postgres", "minio", "createbuckets", "spark-master", "spark-worker-1", "spark-worker-2", "mlflow",
            "airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= services
    scheduler = compose["services"]["airflow-scheduler"]
    assert scheduler["environment"]["BUNDLECAST_ENV"] == "prod"
    assert "postgresql" in scheduler["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_compose_has_what_the_official_airflow_3_compose_requires():
    """The settings without which an Airflow 3 stack does not run its tasks or starts in the
    wrong order (the official docker-compose.yaml has each of them)."""
    services = _compose()["services"]
    airflow = {n: s for n, s in services.items() if n.startswith("airflow-")}
    for name, service in airflow.items():
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${"), name  # one shared secret, from the environment
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"], name  # an admin user
        for dependency, rule in service["depends_on"].items():
            assert rule["condition"] in ("service_healthy", "service_completed_successfully"), (name, dependency)
    for name in ("postgres", "minio", "spark-master", "mlflow", "airflow-api-server", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer"):
        assert services[name].get("healthcheck", {}).get("test"), name
    assert "mc mb" in " ".join(services["createbuckets"]["entrypoint"])
    for bucket in ("bundlecast-exports", "mlflow-artifacts"):
        assert bucket in " ".join(services["createbuckets"]["entrypoint"])
    assert "mlflow" in (DOCKER / "postgres-init.sql").read_text()


def test_images_are_pinned_and_secrets_come_from_the_environment():
    import re

    compose = (DOCKER / "compose.yaml").read_text()
    for name, service in _compose()["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest") and re.search(r":\S*\d", image), (name, image)
    assert re.search(r"^FROM python:3\.11\.\d+-", (DOCKER / "Dockerfile").read_text(), re.M)
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_JWT_SECRET", "BUNDLECAST_LINK_SIGNING_KEY"):
        assert f"${{{secret}:?" in compose, secret  # required, never defaulted
    ignored = (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "*.env" in ignored


def test_the_postgres_drivers_are_locked():
    lock = {line.split("==")[0].lower() for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines()}
    assert {"psycopg2-binary", "asyncpg", "pgserver"} <= lock


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
