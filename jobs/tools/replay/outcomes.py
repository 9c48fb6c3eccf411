"""What the pipeline decided on a replay date, against what users did afterwards (pandas).

Every function takes the decision rows of one run date ``D`` (as the pipeline wrote them)
and the history's purchases, and returns outcome rows: ``kind, scorer, category, bin,
metric, value, n``. ``n`` is what a rate is over, so dates pool by weighting with it;
metrics in ``COUNTS`` are totals and pool by summing. A day is the site's local day, as in
the pipeline; the horizon after ``D`` is ``(D, D + H]`` (the need model's labels).
"""
from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

from bundlecast.models import need as nm
from bundlecast.models import tifuknn

COUNTS = {"bundles", "shipped_items", "wanted_items", "shipped_value", "wanted_value", "returned_items",
          "returned_value", "offers", "predictions", "users", "series", "queries"}
GRID = tuple(round(x, 2) for x in np.arange(0.0, 1.0001, 0.05))


def row(kind, metric, value, n=None, scorer="", category="*", bin=None) -> dict:
    return dict(kind=kind, scorer=scorer, category=category, bin=None if bin is None else float(bin), metric=metric,
                value=None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value),
                n=None if n is None else int(n))


# ------------------------------------------------------------------------------ purchases
def purchases(datasets: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every bought line of the history: user_id, site_id, item_id, item (``site|item``),
    day (site-local date), quantity, value, region (the buyer's), category."""
    from bundlecast.jobs.tools.next_day import utc_timestamps

    orders = datasets["orders"]
    orders = orders[orders.status.str.lower() != "cancelled"]
    lines = datasets["order_lines"].merge(orders[["order_id", "user_id", "order_ts"]], on="order_id")
    zones = datasets["sites"].set_index("site_id").timezone
    ts = utc_timestamps(lines.order_ts.replace("", None))
    day = pd.Series(pd.NaT, index=lines.index, dtype="datetime64[ns]")
    for site, idx in lines.groupby("site_id").groups.items():
        day.loc[idx] = ts.loc[idx].dt.tz_convert(zones.get(site, "UTC")).dt.tz_localize(None).dt.floor("D")
    quantity = pd.to_numeric(lines.quantity, errors="coerce")
    price = pd.to_numeric(lines.unit_price, errors="coerce")
    items = datasets["items"].assign(item=lambda f: f.site_id + "|" + f.item_id).set_index("item").category
    users = datasets["users"].set_index("user_id").region
    out = pd.DataFrame({"user_id": lines.user_id, "site_id": lines.site_id, "item_id": lines.item_id,
                        "item": lines.site_id + "|" + lines.item_id, "day": day.dt.date, "quantity": quantity,
                        "value": quantity * price})
    out = out[(out.quantity > 0) & (out.value >= 0) & out.day.notna()]
    out["region"] = users.reindex(out.user_id).fillna("unknown").to_numpy()
    out["category"] = items.reindex(out.item).fillna("unknown").to_numpy()
    return out.reset_index(drop=True)


def ahead(bought: pd.DataFrame, d: date, horizon: int, start_offset: int = 1) -> pd.DataFrame:
    """Purchases in ``(d + start_offset - 1, d + start_offset - 1 + horizon]``: first day per user and item."""
    lo, hi = d + timedelta(days=start_offset - 1), d + timedelta(days=start_offset - 1 + horizon)
    part = bought[(bought.day > lo) & (bought.day <= hi)]
    return part.groupby(["user_id", "item"], as_index=False).agg(first_day=("day", "min"), value=("value", "sum"))


def before(bought: pd.DataFrame, d: date, days: int) -> pd.DataFrame:
    return bought[(bought.day <= d) & (bought.day > d - timedelta(days=days))]


# ------------------------------------------------------------------------------ need
def need_outcomes(preds: pd.DataFrame, bought: pd.DataFrame, d: date, horizon: int, lookback: int, k: int = 10,
                  tifu_params: dict | None = None) -> tuple[list[dict], pd.DataFrame]:
    """Next-basket metrics of the need predictions against personal top-frequency and
    TIFU-KNN on the same users (those who bought in the horizon and had bought before),
    calibration by decile of probability, and the need-date error against a constant lead
    time. Returns (rows, the predictions with ``label``)."""
    history = before(bought, d, lookback)
    truth = ahead(bought, d, horizon)
    truth = truth[truth.user_id.isin(set(history.user_id))]
    seen = pd.MultiIndex.from_frame(history[["user_id", "item"]].drop_duplicates())
    truth["repeat"] = pd.MultiIndex.from_frame(truth[["user_id", "item"]]).isin(seen)
    preds = preds.assign(item=preds.site_id + "|" + preds.item_id)
    rows = []

    freq = history.groupby(["user_id", "site_id", "item_id"]).day.nunique().rename("freq").reset_index()
    baskets = history.assign(basket=history.day.astype(str))[["user_id", "basket", "item"]].drop_duplicates()
    users = truth.user_id.unique()
    scorers = {"model": nm.top_k_lists(preds, preds.probability, k), "topfreq": nm.top_k_lists(freq, freq.freq, k),
               "tifuknn": tifuknn.recommend(baskets.sort_values(["user_id", "basket", "item"], ignore_index=True),
                                            k, users=users, **(tifu_params or {}))}
    for scorer, recs in scorers.items():
        m = nm.basket_metrics(recs[recs.user_id.isin(users)], truth, k)
        n = int(m.pop("users_evaluated"))
        for metric, value in m.items():
            rows.append(row("need", metric, value, n, scorer=scorer))
    # Calibration: predicted probability against the realised rate, by decile of probability.
    labelled = preds.merge(truth[["user_id", "item", "first_day"]], on=["user_id", "item"], how="left")
    labelled["label"] = labelled.first_day.notna().astype(int)
    if len(labelled):
        edges = np.unique(np.quantile(labelled.probability, np.linspace(0, 1, 11)))
        decile = np.clip(np.searchsorted(edges, labelled.probability, side="right") - 1, 0, max(len(edges) - 2, 0))
        for b, part in labelled.groupby(decile):
            rows += [row("calibration", "predicted", part.probability.mean(), len(part), scorer="model", bin=b),
                     row("calibration", "realised", part.label.mean(), len(part), scorer="model", bin=b)]
        rows.append(row("need", "predictions", len(labelled), scorer="model"))
        rows.append(row("need", "brier", float(((labelled.probability - labelled.label) ** 2).mean()), len(labelled),
                        scorer="model"))
    # Need dates on the bought predictions: the model's date and the constant lead time.
    hit = labelled[labelled.label == 1]
    if len(hit) and "need_date" in hit:
        actual = pd.to_datetime(hit.first_day)
        predicted = pd.to_datetime(hit.need_date)
        lead = typical_lead(bought, d, horizon)
        constant = pd.Timestamp(d) + pd.Timedelta(days=lead)
        rows += [row("need_date", "mae_days", (predicted - actual).dt.days.abs().mean(), len(hit), scorer="model"),
                 row("need_date", "mae_days", (constant - actual).dt.days.abs().mean(), len(hit), scorer="constant"),
                 row("need_date", "lead_days", lead, len(hit), scorer="constant")]
    return rows, labelled


def typical_lead(bought: pd.DataFrame, d: date, horizon: int, cutoffs: int = 4, step: int = 7) -> int:
    """The constant lead time a shop would use on date ``d``, from what it knew then: the
    median days from a cut-off to a returning user's first purchase of an item within the
    horizon, over ``cutoffs`` earlier cut-offs whose horizon ended by ``d``."""
    days = []
    for i in range(cutoffs):
        c = d - timedelta(days=horizon + i * step)
        seen = set(bought[bought.day <= c].user_id)
        truth = ahead(bought, c, horizon)
        days.append((pd.to_datetime(truth[truth.user_id.isin(seen)].first_day) - pd.Timestamp(c)).dt.days)
    days = pd.concat(days) if days else pd.Series(dtype=float)
    return int(round(float(days.median()))) if len(days) else max(1, horizon // 2)


# ------------------------------------------------------------------------------ shipments
def shipment_outcomes(bundles: pd.DataFrame, categories: pd.Series, prices: pd.Series, bought: pd.DataFrame, d: date,
                      horizon: int, delivery_days: int = 1) -> pd.DataFrame:
    """One row per need bundle, as if shipped: category (of its most likely item, the one
    whose threshold applies), confidence, shipped and wanted items and value (wanted =
    bought within ``horizon`` days from delivery), ``correct`` (every item wanted)."""
    truth = ahead(bought, d, horizon, start_offset=delivery_days)
    wanted = set(zip(truth.user_id, truth.item))
    out = []
    for b in bundles.itertuples(index=False):
        items = list(b.items)
        hit = [(b.user_id, i) in wanted for i in items]
        value = [float(prices.get(i, 0.0)) for i in items]
        out.append(dict(user_id=b.user_id, bundle_id=b.bundle_id, category=str(categories.get(items[0], "unknown")),
                        confidence=float(b.confidence), items=items,
                        wanted=[i for i, h in zip(items, hit) if h], shipped_items=len(items),
                        wanted_items=int(sum(hit)), shipped_value=float(sum(value)),
                        wanted_value=float(sum(v for v, h in zip(value, hit) if h)), correct=bool(all(hit)),
                        stock_ok=bool(getattr(b, "stock_ok", True))))
    return pd.DataFrame(out, columns=["user_id", "bundle_id", "category", "confidence", "items", "wanted",
                                      "shipped_items", "wanted_items", "shipped_value", "wanted_value", "correct",
                                      "stock_ok"])


def curve_rows(shipped: pd.DataFrame, grid=GRID) -> list[dict]:
    """The precision-volume curve over the confidence threshold, per category and overall
    (``*``): at each threshold the bundles at or above it, their items and value, the
    wanted share of each, and the would-be returns."""
    rows = []
    if shipped.empty:
        return rows
    for category, part in [("*", shipped), *shipped.groupby("category")]:
        for t in grid:
            s = part[part.confidence >= t - 1e-12]
            rows += [row("shipments", "bundles", len(s), category=category, bin=t),
                     row("shipments", "shipped_items", s.shipped_items.sum(), category=category, bin=t),
                     row("shipments", "wanted_items", s.wanted_items.sum(), category=category, bin=t),
                     row("shipments", "shipped_value", s.shipped_value.sum(), category=category, bin=t),
                     row("shipments", "wanted_value", s.wanted_value.sum(), category=category, bin=t),
                     row("shipments", "returned_items", (s.shipped_items - s.wanted_items).sum(), category=category,
                         bin=t),
                     row("shipments", "returned_value", (s.shipped_value - s.wanted_value).sum(), category=category,
                         bin=t)]
    return rows


# ------------------------------------------------------------------------------ offers
def offer_outcomes(offers: pd.DataFrame, bought: pd.DataFrame) -> list[dict]:
    """Share of offers whose items (any / all) the user bought within the offer's validity,
    per bundle kind. An association, not an effect: the users might have bought anyway."""
    if offers.empty:
        return []
    f = offers.explode("items").rename(columns={"items": "item"})
    start = pd.to_datetime(f.valid_from, utc=True).dt.tz_localize(None).dt.date
    end = pd.to_datetime(f.valid_to, utc=True).dt.tz_localize(None).dt.date
    f = f.assign(start=start, end=end)
    m = f.merge(bought[["user_id", "item", "day"]], on=["user_id", "item"], how="left")
    m["hit"] = m.day.notna() & (m.day >= m.start) & (m.day <= m.end)
    per_item = m.groupby(["offer_id", "item"]).hit.any().reset_index()
    per = per_item.groupby("offer_id").hit.agg(["any", "all"])
    kind = offers.set_index("offer_id").bundle_kind
    rows = []
    for k, part in [("*", per), *per.groupby(kind.reindex(per.index))]:
        rows += [row("offers", "bought_any", part["any"].mean(), len(part), category=k),
                 row("offers", "bought_all", part["all"].mean(), len(part), category=k)]
    return rows


# ------------------------------------------------------------------------------ forecasts
def forecast_outcomes(forecast: pd.DataFrame, bought: pd.DataFrame, d: date, season: int = 7, scale_days: int = 56,
                      level: str = "item_region") -> list[dict]:
    """MASE of the forecast and of seasonal naive (same weekday, the last observed week) on
    the forecast's own days, each scaled by the in-sample MAE of seasonal naive over the
    ``scale_days`` before ``d``; mean over the series with a defined scale."""
    if forecast.empty:
        return []
    key = ["site_id", "item_id", "region"]
    units = bought.assign(region=bought.region if level == "item_region" else "*")
    units = units.groupby(key + ["day"]).quantity.sum()
    last = bought.day.max()
    days = [x for x in sorted(pd.to_datetime(forecast.date).dt.date.unique()) if x <= last]  # within the history
    hist_days = [d - timedelta(days=i) for i in range(scale_days - 1, -1, -1)]
    out_f, out_n, methods = [], [], []
    series = forecast.groupby(key)
    for k, part in series:
        try:
            u = units.loc[k]
        except KeyError:
            u = pd.Series(dtype=float)
        hist = u.reindex(hist_days, fill_value=0.0).to_numpy(float)
        scale = np.abs(hist[season:] - hist[:-season]).mean()
        if not scale > 0:
            continue
        f = part.assign(day=pd.to_datetime(part.date).dt.date).set_index("day").yhat.reindex(days).to_numpy(float)
        actual = u.reindex(days, fill_value=0.0).to_numpy(float)
        naive = np.array([hist[len(hist) - season + ((x - d).days - 1) % season] for x in days])
        out_f.append(np.abs(f - actual).mean() / scale)
        out_n.append(np.abs(naive - actual).mean() / scale)
        methods.append(part.method.iat[0])
    if not out_f:
        return []
    rows = [row("forecast", "mase", float(np.mean(out_f)), len(out_f), scorer="model"),
            row("forecast", "mase", float(np.mean(out_n)), len(out_n), scorer="seasonal_naive"),
            row("forecast", "wins_share", float(np.mean(np.array(out_f) < np.array(out_n))), len(out_f), scorer="model")]
    for method in sorted(set(methods)):
        sel = np.array(methods) == method
        rows.append(row("forecast", "mase", float(np.mean(np.array(out_f)[sel])), int(sel.sum()), scorer="model",
                        category=method))
    return rows


# ------------------------------------------------------------------------------ relationships
def relationship_outcomes(rel: pd.DataFrame, bought: pd.DataFrame, d: date, horizon: int, k: int = 10) -> list[dict]:
    """Hit rate@k of the item relationships on the baskets (user x day) in the horizon, and
    of popularity (the k most bought items before ``d``) on the same queries."""
    from bundlecast.jobs.tools.evaluate_relationships import rank_metrics

    part = bought[(bought.day > d) & (bought.day <= d + timedelta(days=horizon))]
    baskets = part.assign(order_id=part.user_id + "@" + part.day.astype(str))[["order_id", "site_id", "item_id"]] \
        .drop_duplicates()
    baskets = baskets[baskets.groupby("order_id").item_id.transform("size") >= 2]
    if baskets.empty:
        return []
    ranked: dict[tuple, list[tuple]] = {}
    if not rel.empty:
        for (sa, ia), g in rel.sort_values(["site_a", "item_a", "rank", "site_b", "item_b"]).groupby(["site_a", "item_a"]):
            ranked[(sa, ia)] = list(zip(g.site_b, g.item_b))[:k]
    pop = before(bought, d, 28).groupby(["site_id", "item_id"]).size().sort_values(ascending=False, kind="stable")
    top = list(pop.index[:k + 1])
    popular = {a: [t for t in top if t != a][:k] for a in set(zip(baskets.site_id, baskets.item_id))}
    rows = []
    for scorer, ranking in (("model", ranked), ("popularity", popular)):
        m = rank_metrics(baskets, ranking, k)
        n = m.pop("queries")
        rows += [row("relationships", metric, value, n, scorer=scorer) for metric, value in m.items()]
    return rows
