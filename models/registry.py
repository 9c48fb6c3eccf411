"""The MLflow model registry as bundlecast uses it: every trained model is registered and
becomes ``challenger``; it becomes ``champion`` only if it beats the current champion on
the same evaluation frame by ``need.gate_margin`` (and, when configured, the personal
top-frequency baseline); the decision and its reason are tags on the run and the version.
Scoring always loads ``models:/<name>@champion``."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd


def _client():
    from mlflow import MlflowClient
    return MlflowClient()


# The types our own models are made of, reviewed, that skops (MLflow's sklearn format) does
# not trust by default: the calibrated gradient boosting of the need model, the boosted
# regressors of the user value model.
TRUSTED_TYPES = ["functools.partial", "sklearn.calibration._CalibratedClassifier",
                 "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                 "sklearn.utils.validation.check_array"]


def pip_requirements() -> list[str]:
    """The packages a logged sklearn model needs, pinned to this environment's versions.
    Given explicitly, MLflow skips inferring them (which imports the model in a subprocess:
    about 8 s per model logged)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "skops", "cloudpickle"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def log_and_register(model, example: pd.DataFrame, example_output: np.ndarray, name: str, meta: dict) -> str:
    """Log the model (signature, input example) in the active run and register a new
    version of ``name`` with ``meta`` as version tags; it becomes ``challenger``.
    Returns the version."""
    import warnings

    import mlflow.sklearn
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # MLflow checks the example with column names; the model was fitted on arrays
        warnings.filterwarnings("ignore", message="X has feature names")
        info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(example, example_output),
                                        input_example=example.head(5), registered_model_name=name,
                                        skops_trusted_types=TRUSTED_TYPES, pip_requirements=pip_requirements())
    version = str(info.registered_model_version)
    client = _client()
    for k, v in meta.items():
        client.set_model_version_tag(name, version, k, str(v))
    client.set_registered_model_alias(name, "challenger", version)
    return version


def champion_version(name: str):
    """The champion's ModelVersion, or None."""
    from mlflow.exceptions import MlflowException
    try:
        return _client().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


class Champion(NamedTuple):
    model: object
    version: str
    tags: dict
    run_id: str  # the MLflow run that trained it


def champion(cfg: dict, name: str) -> Champion | None:
    """``name@champion`` loaded, or None before the first promotion."""
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    mv = champion_version(name)
    if mv is None:
        return None
    return Champion(mlflow.sklearn.load_model(f"models:/{name}@champion"), mv.version, dict(mv.tags or {}),
                    mv.run_id or "")


def gate(name: str, version: str, metric: str, new_value: float, score_champion, higher_is_better: bool = True,
         margin: float = 0.0, checks=()) -> dict:
    """Promote ``version`` of ``name`` to champion or not; returns {promoted, reason,
    champion_metric}.

    ``checks`` are (passed, reason) pairs that must all pass (e.g. beating a baseline);
    then the champion, loaded and scored on the same evaluation data by
    ``score_champion(model) -> metric``, must be beaten by ``margin``. With no champion
    yet the model is promoted (something has to score), and a failed check is named in
    the reason.
    """
    import mlflow.sklearn

    client = _client()
    current = champion_version(name)
    failed = [reason for passed, reason in checks if not passed]
    reasons = [reason for passed, reason in checks if passed]
    if current is None:
        # Bootstrap: something must score. A first model that fails a check is still
        # promoted, and the reason says so (the next model that passes replaces it).
        note = "no champion yet" + (" (bootstrap; FAILS: " + "; ".join(failed) + ")" if failed else "")
        return _decide(client, name, version, True, "; ".join(reasons + [note]), None)
    if failed:
        return _decide(client, name, version, False, "; ".join(failed), None)
    try:
        old = float(score_champion(mlflow.sklearn.load_model(f"models:/{name}/{current.version}")))
    except Exception as exc:  # noqa: BLE001 - a champion that cannot score this data is replaced
        return _decide(client, name, version, True,
                       "; ".join(reasons + [f"champion v{current.version} cannot score the evaluation data "
                                            f"({type(exc).__name__})"]), None)
    promoted = new_value >= old + margin if higher_is_better else new_value <= old - margin
    op = (">=" if promoted else "<") if higher_is_better else ("<=" if promoted else ">")
    sign = "+" if higher_is_better else "-"
    reasons.append(f"{metric} {new_value:.4f} {op} champion v{current.version} {old:.4f} {sign} margin {margin}")
    return _decide(client, name, version, promoted, "; ".join(reasons), old)


def _decide(client, name: str, version: str, promoted: bool, reason: str, old) -> dict:
    client.set_model_version_tag(name, version, "gate", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "gate_reason", reason)
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
    return {"promoted": promoted, "reason": reason, "champion_metric": old}


# ------------------------------------------------------------------------------- compare
COMPARE = {
    "need": ("bundlecast-need-model", ["model.roc_auc", "model.pr_auc", "model.brier", "model.recall_at_10",
                                       "topfreq.recall_at_10", "popularity.recall_at_10"]),
    "forecast": ("bundlecast-demand-forecast", ["backtest_model_mase", "backtest_seasonal_naive_mase",
                                                "backtest_model_smape", "series"]),
    "value": ("bundlecast-user-value", ["model.mae", "baseline.mae", "model.spearman", "baseline.spearman"]),
}


def compare(cfg: dict, model: str, n: int = 10) -> pd.DataFrame:
    """The last ``n`` runs of one model's experiment side by side."""
    import mlflow

    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    experiment, metrics = COMPARE[model]
    runs = mlflow.search_runs(experiment_names=[experiment], max_results=n, order_by=["attributes.start_time DESC"])
    if runs.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"run": runs["run_id"].str[:8], "started": runs["start_time"].dt.strftime("%Y-%m-%d %H:%M"),
                        "data_end": runs.get("tags.data_window_end")})
    for m in metrics:
        col = f"metrics.{m}"
        out[m] = runs[col].round(4) if col in runs else np.nan
    out["promoted"] = runs.get("tags.promoted", pd.Series(["-"] * len(runs))).fillna("-")
    return out
