"""The experiments step's run (see the package docstring)."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.models import experiments as X
from bundlecast.models import offer_types


def experiment_inputs(tables) -> dict:
    """The frames the analysis reads: exposures, orders, order lines, items, offers, feedback."""
    return {name: tables.read(name) for name in ("experiment_exposures", "orders", "order_lines", "items", "offers",
                                                  "feedback")}


def per_user(inputs: dict, exp: dict, dt: str, loyalty_cost_share: float) -> pd.DataFrame:
    """One row per exposed user with a finished window: variant, conversion, revenue, margin
    (pure: ``inputs`` from ``experiment_inputs``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    A = int(exp["attribution_days"])
    last_start = date.fromisoformat(dt) - timedelta(days=A)
    first = Window.partitionBy("user_id").orderBy("exposed_at", "dt")
    exp_rows = (inputs["experiment_exposures"].filter(F.col("experiment") == exp["name"])
                .withColumn("_r", F.row_number().over(first)).filter("_r = 1")
                .filter(F.to_date("exposed_at") <= F.lit(last_start))
                .select("user_id", "variant", "offer_id", F.col("exposed_at").alias("t0")))
    orders = (inputs["orders"].filter(F.col("status") != "cancelled")
              .select("order_id", "user_id", "order_ts"))
    lines = inputs["order_lines"]
    items = inputs["items"].select("site_id", "item_id", "cost")
    amounts = (lines.join(items, ["site_id", "item_id"], "left")
               .select("order_id", (F.col("quantity") * F.col("unit_price") * (1 - F.coalesce("discount", F.lit(0.0)))).alias("rev"),
                       (F.col("quantity") * F.coalesce("cost", F.lit(0.0))).alias("cogs"))
               .groupBy("order_id").agg(F.sum("rev").alias("rev"), F.sum("cogs").alias("cogs")))
    window_end = F.col("t0") + F.make_interval(days=F.lit(A))
    outcome = (exp_rows.join(orders, "user_id").filter((F.col("order_ts") >= F.col("t0")) & (F.col("order_ts") < window_end))
               .join(amounts, "order_id").groupBy("user_id")
               .agg(F.lit(1).alias("conversion"), F.sum("rev").alias("revenue"), F.sum("cogs").alias("cogs")))
    offers = inputs["offers"].select("offer_id", "offer_type", "incentive_value")
    redeem = (inputs["feedback"].filter(F.col("kind") == "offer_redeem")
              .select(F.col("reference_id").alias("offer_id"), "feedback_ts").join(offers, "offer_id"))
    incentive = (exp_rows.join(redeem, "offer_id")
                 .filter((F.col("feedback_ts") >= F.col("t0")) & (F.col("feedback_ts") < window_end))
                 .groupBy("user_id").agg(F.sum(offer_types.cost_beyond_revenue_column(
                     F.col("offer_type"), F.col("incentive_value"), loyalty_cost_share)).alias("extra_cost")))
    # Price incentives are already in the order's revenue (the user paid less); the others cost on top.
    out = (exp_rows.join(outcome, "user_id", "left").join(incentive, "user_id", "left")
           .na.fill(0, subset=["conversion", "revenue", "cogs", "extra_cost"])
           .select("user_id", "variant", F.to_date("t0").alias("first_exposure"), F.col("conversion").cast("int").alias("conversion"),
                   F.col("revenue").alias("revenue_per_user"),
                   (F.col("revenue") - F.col("cogs") - F.col("extra_cost")).alias("margin_per_user"))).toPandas()
    return out


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> pd.DataFrame:
    cfg = cfg or config()
    tables = Tables(spark, cfg)
    summary = StepRun("experiments", dt, run_id or f"experiments-{dt}-{uuid.uuid4().hex[:8]}")
    run_id = summary.run_id
    results, inputs = [], experiment_inputs(tables)
    for exp in cfg.get("experiments") or []:
        X.validate(exp)
        users = per_user(inputs, exp, dt, cfg["incentives"]["loyalty_cost_share"])
        if users.empty:
            summary.counts["experiments_without_finished_windows"] += 1
            progress(f"experiment {exp['name']}: no exposure with a finished {exp['attribution_days']}-day window by {dt}")
            continue
        r = X.analyse(users, exp)
        r["experiment"] = exp["name"]
        r["window_start"] = users.first_exposure.min()
        r["window_end"] = date.fromisoformat(dt)
        results.append(r)
    out = pd.concat(results, ignore_index=True) if results else pd.DataFrame()
    if len(out):
        out["dt"], out["run_id"] = dt, run_id
        out = out.replace({np.nan: None})
    tables.replace("experiment_results", tables.frame("experiment_results", out), dt=dt)
    summary.counts["experiments_analysed"] = len(results)
    summary.counts["result_rows"] = len(out)
    record(tables, summary.finish())
    progress(render(out, cfg))
    return out


def report(dt: str | None = None, experiment: str | None = None, cfg: dict | None = None, spark=None) -> str:
    """The latest analysis (or that of ``dt``) as text."""
    from pyspark.sql import functions as F

    cfg = cfg or config()
    if spark is None:
        from bundlecast.jobs.core.spark import get_spark
        spark = get_spark("bundlecast-experiments")
    res = Tables(spark, cfg).read("experiment_results")
    if experiment:
        res = res.filter(F.col("experiment") == experiment)
    day = dt or res.agg(F.max("dt")).first()[0]
    if day is None:
        return "no experiment results yet (the nightly DAG's experiments task writes them)"
    return render(res.filter(F.col("dt") == F.lit(str(day)).cast("date")).toPandas(), cfg)


def render(out: pd.DataFrame, cfg: dict) -> str:
    if out is None or out.empty:
        return "experiments: nothing to analyse yet"
    primary = {e["name"]: e.get("primary_metric", "margin_per_user") for e in cfg.get("experiments") or []}
    lines = []
    for name, g in out.groupby("experiment"):
        srm = g.srm_p_value.iloc[0]
        mismatch = "  <- MISMATCH: check assignment/logging" if srm is not None and srm < 0.001 else ""
        lines.append(f"experiment {name} (analysed {g.dt.iloc[0] if 'dt' in g else ''}; primary metric "
                     f"{primary.get(name, '?')}; sample-ratio p = {srm:.3f}{mismatch})")
        lines.append(f"  {'metric':17s} {'variant':10s} {'users':>7s} {'estimate':>10s} {'95% CI':>21s} "
                     f"{'vs control':>11s} {'95% CI':>21s} {'p':>7s}")
        for r in g.sort_values(["metric", "variant"]).itertuples():
            ci = f"[{r.ci_low:.4f}, {r.ci_high:.4f}]"
            dci = "" if r.diff_vs_control is None or pd.isna(r.diff_vs_control) else f"[{r.diff_ci_low:.4f}, {r.diff_ci_high:.4f}]"
            d = "" if not dci else f"{r.diff_vs_control:+.4f}"
            p = "" if not dci else f"{r.p_value:.3f}"
            lines.append(f"  {r.metric:17s} {r.variant:10s} {r.users:7,d} {r.estimate:10.4f} {ci:>21s} {d:>11s} {dci:>21s} "
                         f"{p:>7s}{'  WINNER' if r.winner else ''}")
    return "\n".join(lines)
