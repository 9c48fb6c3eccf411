"""The replay's report: one HTML page (``BUNDLECAST_HOME/replay/report.html``) with the
headline figures, the precision-volume curve per category, the calibration plot and the
figures per date, for the person deciding whether to switch proactive shipping on. The
page, its plots and the pooled summary are also logged to MLflow (experiment
``bundlecast-replay``), with the headline figures as metrics."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from bundlecast.jobs.tools.replay import thresholds as th

TOP_CATEGORIES = 8


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def curve_plot(summary: pd.DataFrame) -> bytes:
    """Item precision against bundles shipped as the threshold moves, per category."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary[summary.kind == "shipments"].pivot_table(index=["category", "bin"], columns="metric", values="value")
    fig, ax = plt.subplots(figsize=(8, 5))
    if len(s):
        s = s.reset_index()
        volume = s[s.bin == 0].set_index("category").bundles.sort_values(ascending=False)
        shown = ["*"] + [c for c in volume.index if c != "*"][:TOP_CATEGORIES]
        for cat in shown:
            c = s[(s.category == cat) & (s.bundles > 0)].sort_values("bin")
            precision = c.wanted_items / c.shipped_items
            ax.plot(c.bundles, precision, marker="o", ms=3, lw=2.5 if cat == "*" else 1.2,
                    label="all categories" if cat == "*" else cat)
            for x, y, t in zip(c.bundles, precision, c.bin):
                if abs(t * 10 - round(t * 10)) < 1e-9 and cat == "*":
                    ax.annotate(f"{t:.1f}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("symlog")
    ax.set_xlabel("bundles shipped over the replay (at or above the threshold)")
    ax.set_ylabel("precision: share of shipped items bought within the horizon")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Precision-volume curve over the confidence threshold (labels: threshold)")
    png = _fig_png(fig)
    plt.close(fig)
    return png


def calibration_plot(summary: pd.DataFrame) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = summary[summary.kind == "calibration"].pivot_table(index="bin", columns="metric", values="value")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect")
    if len(c):
        ax.plot(c.predicted, c.realised, marker="o", label="need model (deciles)")
    hi = max(0.05, float(c.max().max()) * 1.1) if len(c) else 1
    ax.set_xlim(0, min(1, hi))
    ax.set_ylim(0, min(1, hi))
    ax.set_xlabel("predicted probability (decile mean)")
    ax.set_ylabel("realised rate (bought within the horizon)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Calibration of the need predictions")
    png = _fig_png(fig)
    plt.close(fig)
    return png


def _value(summary: pd.DataFrame, kind: str, metric: str, scorer: str = "", category: str = "*"):
    s = summary[(summary.kind == kind) & (summary.metric == metric) & (summary.scorer == scorer)
                & (summary.category == category) & summary.bin.isna()]
    return float(s.value.iat[0]) if len(s) and pd.notna(s.value.iat[0]) else None


def headline(summary: pd.DataFrame, shipped: pd.DataFrame, proposal: pd.DataFrame) -> dict:
    f = {}
    for scorer in ("model", "topfreq", "tifuknn"):
        for metric in ("recall_at_10", "ndcg_at_10", "recall_repeat_at_10", "recall_explore_at_10"):
            f[f"need.{scorer}.{metric}"] = _value(summary, "need", metric, scorer)
    for scorer in ("model", "constant"):
        f[f"need_date.{scorer}.mae_days"] = _value(summary, "need_date", "mae_days", scorer)
    for scorer in ("model", "seasonal_naive"):
        f[f"forecast.{scorer}.mase"] = _value(summary, "forecast", "mase", scorer)
    for scorer in ("model", "popularity"):
        f[f"relationships.{scorer}.hit_rate_at_10"] = _value(summary, "relationships", "hit_rate_at_10", scorer)
    f["offers.bought_any"] = _value(summary, "offers", "bought_any")
    if len(shipped):
        for k, v in th.at_thresholds(shipped, proposal).items():
            f[f"proactive.proposed.{k}"] = v
    return f


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.4f}", na_rep="–", border=0, classes="t")


def write(spark, cfg: dict, source: dict, plan, outcomes: pd.DataFrame, summary: pd.DataFrame, seconds: float,
          echo=print) -> dict:
    """The report, its plots and the MLflow run. ``source``: the history's ``source`` name and
    what the replay ``filled``; ``outcomes``: every finished date's ``replay_outcomes`` rows."""
    from bundlecast.jobs.core.tables import Tables

    r = cfg.get("replay") or {}
    target, min_ship = float(r.get("target_precision", 0.7)), int(r.get("min_shipments", 20))
    shipped = Tables(spark, cfg).read("replay_shipments").toPandas()
    proposal = th.propose(shipped, target, min_ship, cfg) if len(shipped) else pd.DataFrame()
    figures = headline(summary, shipped, proposal)
    figures["wall_seconds"] = round(seconds, 1)
    figures["dates"] = int(outcomes.dt.nunique())
    out = Path(cfg["home"], "replay")
    out.mkdir(parents=True, exist_ok=True)
    curve, calib = curve_plot(summary), calibration_plot(summary)
    (out / "precision_volume.png").write_bytes(curve)
    (out / "calibration.png").write_bytes(calib)
    summary.to_csv(out / "summary.csv", index=False)
    need = outcomes[(outcomes.kind == "need") & outcomes.metric.isin(["recall_at_10", "recall_repeat_at_10",
                                                                      "recall_explore_at_10", "ndcg_at_10"])]
    per_date = need.pivot_table(index="dt", columns=["metric", "scorer"], values="value").round(4)
    per_date.columns = [f"{m} {s}" for m, s in per_date.columns]
    other = outcomes[outcomes.kind.isin(["forecast", "need_date", "relationships"]) & outcomes.metric.isin(
        ["mase", "mae_days", "hit_rate_at_10"]) & (outcomes.category == "*")]
    per_date2 = other.pivot_table(index="dt", columns=["kind", "scorer"], values="value").round(4)
    per_date2.columns = [f"{k} {s}" for k, s in per_date2.columns]
    page = _page(source, plan, figures, proposal, target, per_date.reset_index(), per_date2.reset_index(),
                 summary, curve, calib)
    (out / "report.html").write_text(page)
    echo(f"report: {out / 'report.html'}")
    figures["mlflow_run_id"] = _log_mlflow(cfg, plan, figures, out)
    return figures


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _page(source: dict, plan, f: dict, proposal: pd.DataFrame, target: float, per_date: pd.DataFrame,
          per_date2: pd.DataFrame, summary: pd.DataFrame, curve: bytes, calib: bytes) -> str:
    def fmt(x, p=3):
        return "–" if x is None else f"{x:.{p}f}"

    need_rows = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{fmt(f.get(f'need.{s}.{m}'))}</td>" for m in
                                          ("recall_at_10", "ndcg_at_10", "recall_repeat_at_10", "recall_explore_at_10"))
        + "</tr>" for s, label in (("model", "need model"), ("tifuknn", "TIFU-KNN"), ("topfreq", "personal top-frequency")))
    prop = f
    offers = summary[(summary.kind == "offers") & summary.bin.isna()][["category", "metric", "value", "n"]]
    filled = "".join(f"<li>{html.escape(x)}</li>" for x in source.get("filled", [])) or "<li>nothing: the history has them</li>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>bundlecast replay</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}table.t{{border-collapse:collapse;font-size:13px}}
table.t td,table.t th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}.note{{background:#f6f6f0;padding:8px 12px}}</style>
</head><body>
<h1>Would proactive shipping have paid? Replay of {html.escape(source["source"])}</h1>
<p>{f['dates']} of {len(plan.dates)} replay dates done, from {plan.first} to {plan.dates[-1]}, every {plan.every} day(s);
the history was landed day by day and the nightly ran on each replay date on what had landed by the end of that day. Wall time
{f['wall_seconds'] / 60:.1f} min.</p>
<h2>Headline</h2>
<table class="t"><tr><th>next basket (horizon)</th><th>recall@10</th><th>NDCG@10</th><th>repeat recall</th><th>explore recall</th></tr>
{need_rows}</table>
<p>Proactive shipping at the thresholds proposed for a target precision of {target} (see below):
<b>{prop.get('proactive.proposed.bundles', 0)}</b> bundles ({prop.get('proactive.proposed.items', 0)} items) over the replay,
item precision <b>{fmt(prop.get('proactive.proposed.precision_items'))}</b>, value precision
{fmt(prop.get('proactive.proposed.precision_value'))}, would-be returns {prop.get('proactive.proposed.returned_items', 0)} items.</p>
<p>Need dates: mean absolute error {fmt(f.get('need_date.model.mae_days'), 2)} days (model) against
{fmt(f.get('need_date.constant.mae_days'), 2)} (constant lead time). Demand forecast MASE {fmt(f.get('forecast.model.mase'))}
against {fmt(f.get('forecast.seasonal_naive.mase'))} for seasonal naive. Item relationships hit rate@10
{fmt(f.get('relationships.model.hit_rate_at_10'))} against {fmt(f.get('relationships.popularity.hit_rate_at_10'))} for popularity.</p>
<h2>Precision against volume</h2>
{_img(curve, "precision-volume curve")}
<p>Each point is a confidence threshold: the bundles at or above it over all replay dates, and the share of their items the
user bought within the horizon after delivery. A bundle is judged whether or not the nightly could have shipped it (opt-in,
stock, routes); <code>replay_shipments.shipped</code> says which it did.</p>
<h2>Proposed thresholds (target precision {target})</h2>
{_table(proposal) if len(proposal) else "<p>no need bundles</p>"}
<p><code>bundlecast replay thresholds --target-precision {target}</code> writes the replay-backed ones to the state
directory's overlay; the cancellation rule still raises a category's threshold on top.</p>
<h2>Calibration</h2>
{_img(calib, "calibration plot")}
<h2>Offers</h2>
<p class="note">How often the offered items were bought within the offer's validity. This is an <b>association, not an
effect</b>: these users might have bought anyway; the A/B results (<code>experiment_results</code>) measure the effect.</p>
{_table(offers)}
<h2>Per replay date</h2>
{_table(per_date)}
{_table(per_date2)}
<h2>What the data lacks and how the replay fills it</h2>
<ul>{filled}</ul>
<p class="note">Outcomes that depend on what was filled: the shipped flag and routing km (not measured without addresses and
routes), stock (bundles are judged whether or not stock covered them). Need, calibration, need dates, the
precision-volume curve, offers' association, forecasts and relationships use only the recorded purchases.</p>
</body></html>
"""


def _log_mlflow(cfg: dict, plan, figures: dict, folder: Path) -> str | None:
    import mlflow

    from bundlecast.models.tracking import experiment

    experiment(cfg, "bundlecast-replay")
    with mlflow.start_run(run_name=f"replay {plan.first}..{plan.last} every {plan.every}d") as run:
        mlflow.log_params({"source": plan.source[-200:], "first": plan.first, "last": plan.last, "every_days": plan.every})
        mlflow.log_metrics({k.replace("@", "_"): float(v) for k, v in figures.items()
                            if isinstance(v, (int, float)) and v is not None})
        for name in ("report.html", "precision_volume.png", "calibration.png", "summary.csv"):
            mlflow.log_artifact(str(folder / name), artifact_path="replay")
        return run.info.run_id
