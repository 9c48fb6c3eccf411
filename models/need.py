"""Need prediction: will this user buy this item within H days? Training, calibration,
ranking metrics and the two baselines, on pandas frames built by the need step (``jobs/need/``).

An example frame has one row per (user, candidate item) at a cut-off date, the columns of
``FEATURES``, ``label`` (bought within H days after the cut-off) and ``weight`` (inverse of
the negative sampling rate; 1 for evaluation frames).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = [
    # the user and this item
    "n_days_item", "days_since_item", "mean_gap_item", "due_in_item", "cycle_ratio_item", "qty_item",
    # the user and the item's category
    "n_days_cat", "days_since_cat", "mean_gap_cat", "due_in_cat",
    # the user
    "n_order_days", "days_since_order", "n_items_user", "n_sites_user", "revenue_user", "views_user_7",
    "age", "segment_code", "home_site",
    # recent browsing of this item
    "views_item_7", "views_item_30", "carts_item_7",
    # candidate sources and their scores
    "cf_score", "rel_score", "src_repeat", "src_cf", "src_related", "src_popular",
    # the item
    "item_buyers_28", "item_trend", "seg_share_28", "item_forecast_h", "price", "discount_28",
    # context
    "temperature_7",
]
CATEGORICAL = ["segment_code"]
# The user's order weekdays relative to the cut-off (share of order days on the weekday of
# cut-off + k) and cadence: what dates a need within the horizon, not whether it comes.
WEEKDAY_PROFILE = [f"share_d{k}" for k in range(1, 8)] + ["mean_gap_order"]
# The need-date regressor's inputs: the weekday profile and the user's own cycles. On Online
# Retail these beat every feature together (fewer to overfit on a few thousand positives);
# the figures are in the README (the need model's "need-date regressor" and the Online Retail replay).
DATE_FEATURES = WEEKDAY_PROFILE + ["n_order_days", "days_since_order", "n_days_item", "days_since_item",
                                   "mean_gap_item", "due_in_item", "n_days_cat", "days_since_cat", "mean_gap_cat",
                                   "due_in_cat"]
COLUMNS = FEATURES + [c for c in DATE_FEATURES if c not in FEATURES]  # what the need step builds


def matrix(frame: pd.DataFrame, columns: list[str] = FEATURES) -> np.ndarray:
    """The feature matrix. Missing values stay NaN (the booster routes them), except in a
    column that is missing everywhere (e.g. no ages or no weather in this world), which
    scikit-learn's binning cannot take: that column becomes 0."""
    x = frame[columns].to_numpy(float)
    empty = np.isnan(x).all(axis=0) if len(x) else np.zeros(x.shape[1], bool)
    x[:, empty] = 0.0
    return x


def new_model(seed: int = 0):
    """Gradient boosting, probabilities calibrated by isotonic regression (3-fold)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier

    booster = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.06, max_leaf_nodes=31, min_samples_leaf=40,
                                             l2_regularization=1.0, early_stopping=True, validation_fraction=0.1,
                                             categorical_features=[FEATURES.index(c) for c in CATEGORICAL],
                                             random_state=seed)
    return CalibratedClassifierCV(booster, method="isotonic", cv=3)


def fit(train: pd.DataFrame, seed: int = 0):
    model = new_model(seed)
    model.fit(matrix(train), train.label.to_numpy(int), sample_weight=train.weight.to_numpy(float))
    return model


def predict(model, frame: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(matrix(frame))[:, 1]


# ----------------------------------------------------------------------------- baselines
def topfreq_score(frame: pd.DataFrame) -> np.ndarray:
    """Personal top-frequency: how often the user bought the item (ties: the more recent)."""
    return frame.n_days_item.to_numpy(float) + 1.0 / (2.0 + frame.days_since_item.to_numpy(float))


def popularity_score(frame: pd.DataFrame) -> np.ndarray:
    """Segment popularity: the item's share of the user's segment's buyers, last 28 days."""
    return frame.seg_share_28.to_numpy(float)


BASELINES = {"topfreq": topfreq_score, "popularity": popularity_score}


def calibrate_score(train: pd.DataFrame, score_fn):
    """Isotonic map from a baseline's score to a probability, fitted on the training
    examples, so Brier and calibration compare like with like."""
    from sklearn.isotonic import IsotonicRegression
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(score_fn(train), train.label.to_numpy(float), sample_weight=train.weight.to_numpy(float))
    return lambda frame: iso.predict(score_fn(frame))


# ------------------------------------------------------------------------------- metrics
def ranking_at_k(frame: pd.DataFrame, score: np.ndarray, bought: pd.Series, k: int) -> dict[str, float]:
    """Mean precision@k and recall@k over users who bought anything in the window.

    ``bought`` is the number of distinct items each user (index) bought in the window,
    candidates or not, so recall counts what the candidate generation missed."""
    f = frame[["user_id", "label"]].assign(score=score)
    f = f[f.user_id.isin(bought[bought > 0].index)]
    f = f.sort_values(["user_id", "score"], ascending=[True, False], kind="stable")  # ties: the frame's order
    top = f.groupby("user_id", sort=False).head(k)
    hits = top.groupby("user_id").label.sum().reindex(bought[bought > 0].index, fill_value=0)
    return {f"precision_at_{k}": float((hits / k).mean()),
            f"recall_at_{k}": float((hits / bought[bought > 0]).mean())}


def top_k_lists(frame: pd.DataFrame, score: np.ndarray, k: int) -> pd.DataFrame:
    """(user_id, item, rank) of the ``k`` best-scored candidates per user; ``item`` is
    ``site|item``; ties by the item key (deterministic whatever the frame's order)."""
    f = pd.DataFrame({"user_id": frame.user_id.to_numpy(), "item": (frame.site_id + "|" + frame.item_id).to_numpy(),
                      "score": np.round(np.asarray(score, float), 12)})
    f = f.sort_values(["user_id", "score", "item"], ascending=[True, False, True], kind="stable")
    top = f.groupby("user_id", sort=False).head(k)
    return top.assign(rank=top.groupby("user_id", sort=False).cumcount() + 1)[["user_id", "item", "rank"]]


def basket_metrics(recs: pd.DataFrame, truth: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """Next-basket metrics of top-``k`` lists, as Li et al. (TOIS 2023) report them.

    ``recs``: user_id, item, rank (1 = best); ``truth``: user_id, item, repeat (the user
    bought the item before the cut-off). Over the users with a non-empty truth: recall@k
    (share of the truth in the list) and NDCG@k (binary gain, log2 discount); recall of
    the repeat items over users with any, and of the explore (new to the user) items over
    users with any. A user without a list scores 0."""
    recs = recs[recs["rank"] <= k]
    hits = truth.merge(recs[["user_id", "item", "rank"]], on=["user_id", "item"], how="left")
    hits["hit"] = hits["rank"].notna()
    hits["gain"] = np.where(hits.hit, 1.0 / np.log2(hits["rank"].fillna(1) + 1.0), 0.0)
    per = hits.groupby("user_id").agg(n=("item", "size"), hit=("hit", "sum"), dcg=("gain", "sum"))
    ideal = per.n.clip(upper=k).map(lambda m: float((1.0 / np.log2(np.arange(2, m + 2))).sum()))

    def part_recall(mask) -> float:
        part = hits[mask].groupby("user_id").agg(n=("item", "size"), hit=("hit", "sum"))
        return float((part.hit / part.n).mean()) if len(part) else float("nan")

    return {f"recall_at_{k}": float((per.hit / per.n).mean()) if len(per) else float("nan"),
            f"ndcg_at_{k}": float((per.dcg / ideal).mean()) if len(per) else float("nan"),
            f"recall_repeat_at_{k}": part_recall(hits.repeat), f"recall_explore_at_{k}": part_recall(~hits.repeat),
            "users_evaluated": float(len(per))}


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate per equal-count bin of the prediction."""
    frame = pd.DataFrame({"y": y, "p": p})
    frame["bin"] = pd.qcut(frame.p.rank(method="first"), q=min(bins, len(frame)), labels=False)
    return frame.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size")).reset_index()


def classification_metrics(y: np.ndarray, p: np.ndarray, rank_score: np.ndarray | None = None) -> dict[str, float]:
    """ROC AUC and PR AUC of ``rank_score`` (default ``p``); Brier and expected calibration
    error (10 equal-count bins) of the probability ``p``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    r = p if rank_score is None else rank_score
    cal = calibration_table(y, p) if len(y) else None
    ece = float((cal.n * (cal.predicted - cal.observed).abs()).sum() / cal.n.sum()) if cal is not None else float("nan")
    out = {"brier": float(brier_score_loss(y, p)) if len(y) else float("nan"), "ece": ece}
    if len(np.unique(y)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), **out}
    return {"roc_auc": float(roc_auc_score(y, r)), "pr_auc": float(average_precision_score(y, r)), **out}


def evaluate(frame: pd.DataFrame, probability: np.ndarray, bought: pd.Series, k: int = 10,
             rank_score: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one scorer on one evaluation frame. Rankings (AUCs, @k) use
    ``rank_score`` when given (a baseline's raw score, whose calibration has ties)."""
    y = frame.label.to_numpy(int)
    r = probability if rank_score is None else rank_score
    return {**classification_metrics(y, probability, r), **ranking_at_k(frame, r, bought, k),
            "base_rate": float(y.mean()) if len(y) else float("nan")}


BASES = ("item cycle", "category cycle")


def _cycle_due(frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """(days from the cut-off to the due date by the user's own cycle, its basis): the item
    cycle (last purchase + mean gap) where the user has one, else the category cycle, else
    NaN with basis "typical lead time"."""
    item_due = frame.due_in_item.where(frame.mean_gap_item > 0)
    cat_due = frame.due_in_cat.where(frame.mean_gap_cat > 0)
    basis = np.where(item_due.notna(), BASES[0], np.where(cat_due.notna(), BASES[1], "typical lead time"))
    return item_due.fillna(cat_due).astype(float), basis


def _offsets(due: pd.Series, basis: np.ndarray, horizon: int, typical: int, weights: dict) -> pd.Series:
    w = pd.Series(basis, index=due.index).map(lambda b: float(weights.get(b, 0.0)))
    blended = (w * due.fillna(typical) + (1.0 - w) * typical)
    return blended.clip(1, horizon).round().astype(int)


def fit_need_date_weights(positives: pd.DataFrame, horizon: int, typical: int) -> dict[str, float]:
    """Per basis, how much of the user's own cycle to trust against the typical lead time:
    the weight w in [0, 1] (steps of 0.1) of ``w * cycle + (1 - w) * typical`` with the
    least mean absolute error in days on the training positives (``days_to_need``). w = 0
    is the constant, so on the training data the blend is never worse than it."""
    due, basis = _cycle_due(positives)
    actual = positives.days_to_need.to_numpy(float)
    weights = {}
    for b in BASES:
        mask = basis == b
        if mask.sum() < 20:
            weights[b] = 0.0
            continue
        grid = np.round(np.arange(0.0, 1.01, 0.1), 1)
        errors = [np.abs(_offsets(due[mask], basis[mask], horizon, typical, {b: w}).to_numpy() - actual[mask]).mean()
                  for w in grid]
        weights[b] = float(grid[int(np.argmin(errors))])  # the smallest w among equals: the simpler rule
    return weights


def fit_date_model(positives: pd.DataFrame, horizon: int, min_positives: int = 200):
    """The need date as a conditional median: gradient boosting with absolute-error loss on
    the features of the training positives, predicting the days from the cut-off to the
    first purchase (1..H). The constant lead time is the unconditional median (the boosting's
    starting point), so this is what the features add to it. None with fewer than
    ``min_positives`` positives.

    A fixed 50 shrunken rounds and no early stopping: the prediction stays near the constant
    unless the features pull it clearly away, and the fit does not depend on a random
    validation split (nor on a seed). On Online Retail's refits the early-stopped fit's
    error moved by up to 0.06 days with the row order alone, as much as its whole lead over
    the constant; the fixed fit is 0.04 days ahead of the constant on the judged top-10
    positives of the weeks after each refit, where the early-stopped one tied it (README, "need-date regressor")."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    if len(positives) < min_positives:
        return None
    columns = list(DATE_FEATURES)
    reg = HistGradientBoostingRegressor(loss="absolute_error", max_iter=50, learning_rate=0.05, max_leaf_nodes=15,
                                        min_samples_leaf=50, l2_regularization=1.0, early_stopping=False,
                                        categorical_features=[columns.index(c) for c in CATEGORICAL if c in columns])
    reg.fit(matrix(positives, columns), positives.days_to_need.to_numpy(float).clip(1, horizon))
    reg.bundlecast_features_ = columns  # what it was fitted on: a later feature list does not break an old champion
    return reg


def need_dates(frame: pd.DataFrame, cutoff: pd.Timestamp, horizon: int, default_offset: int,
               weights: dict | None = None, date_model=None) -> tuple[pd.Series, pd.Series]:
    """Predicted need date and its basis. With a ``date_model`` (``fit_date_model``, kept
    when it beat the rules below on the evaluation positives) its conditional median, basis
    "date model". Else the user's own cycle for this item (last purchase + mean gap) when
    there is one, else the category cycle, else cut-off + the typical days-to-purchase
    learned in training; the cycle blended with the typical lead time by the basis's fitted
    ``weights`` (``fit_need_date_weights``; None: the cycle alone). Always within
    (cut-off, cut-off + H]."""
    if date_model is not None:
        columns = getattr(date_model, "bundlecast_features_", FEATURES)  # registered before the list was kept
        days = date_model.predict(matrix(frame, columns)) if len(frame) else np.zeros(0)
        offset = pd.Series(np.clip(np.round(days), 1, horizon).astype(int), index=frame.index)
        return cutoff + pd.to_timedelta(offset, unit="D"), pd.Series("date model", index=frame.index)
    due, basis = _cycle_due(frame)
    weights = {b: 1.0 for b in BASES} if weights is None else weights
    offset = _offsets(due, basis, horizon, default_offset, weights)
    return cutoff + pd.to_timedelta(offset, unit="D"), pd.Series(basis, index=frame.index)
