"""MLflow set-up shared by every model: one experiment per model, artifacts under the
configured root (local folder or s3://), the tracking store from configuration."""
from __future__ import annotations


def experiment(cfg: dict, name: str) -> str:
    """Point MLflow at the configured store and select experiment ``name`` (created on
    first use with its artifacts under ``mlflow.artifact_root``). Returns its id."""
    import os

    import mlflow

    endpoint = cfg["storage"].get("s3_endpoint_url")
    if endpoint:  # MLflow's S3 artifact store takes its endpoint from here
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)
    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    found = mlflow.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else mlflow.create_experiment(
        name, artifact_location=f"{cfg['mlflow']['artifact_root']}/{name}")
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
