"""Feedback: customers' cancel / postpone / accept and dispatch's proof of delivery, applied once, in order."""
from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from bundlecast.jobs.core.runs import StepRun
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.proactive.decision import write_shipments
from bundlecast.jobs.proactive.frames import (
    ACTIVE,
    CUSTOMER_KINDS,
    FINAL,
    PROOF_KINDS,
    as_date,
    columns_of,
    read_pandas,
)
from bundlecast.jobs.proactive.notifications import notify
from bundlecast.jobs.proactive.reservations import release
from bundlecast.jobs.proactive.tokens import CUSTOMER_ACTIONS, refusal


def unapplied(fb: pd.DataFrame, shipments: pd.DataFrame) -> pd.Series:
    """Which feedback rows come after the last one applied to their shipment (by time, then
    id). A shipment whose last applied feedback is not among ``fb`` (state from a later run
    date) takes none."""
    seen = fb.set_index("feedback_id").feedback_ts
    last = {sid: ((seen[f], f) if f in seen.index else (pd.Timestamp.max, ""))
            for sid, f in shipments[["shipment_id", "feedback_id"]].dropna().itertuples(index=False)}
    floor = (pd.Timestamp.min, "")
    return pd.Series([(pd.Timestamp(r.feedback_ts), r.feedback_id) > last.get(r.reference_id, floor)
                      for r in fb.itertuples()], index=fb.index, dtype=bool)


def refusals(fb: pd.DataFrame, shipments: pd.DataFrame, secrets: dict) -> pd.Series:
    """Pure: why each feedback row may not act on its shipment (None where it may). A
    customer's row needs the token of its link (``link_signing_key``), dispatch's proof the
    token of dispatch's feed (``dispatch_feed_key``); either must be for this shipment, the
    shipment's own user, this kind, and not expired at the feedback's time."""
    owner = shipments.set_index("shipment_id").user_id
    out = []
    for r in fb.itertuples():
        user = owner.get(r.reference_id)
        customer = r.kind in CUSTOMER_ACTIONS
        key = secrets["link_signing_key"] if customer else secrets["dispatch_feed_key"]
        reason = refusal(key, getattr(r, "token", None), r.reference_id, user, r.kind, pd.Timestamp(r.feedback_ts))
        if reason is None and customer and r.user_id != user:
            reason = "wrong_user"
        out.append(reason)
    return pd.Series(out, index=fb.index, dtype=object)


def apply_feedback(spark, cfg: dict, dt: str, run_id: str, summary: StepRun) -> set[date]:
    """Customers' cancel / postpone / accept and dispatch's proof of delivery (delivered /
    failed) from ``feedback`` up to the end of ``dt``, then close past delivery days.
    Returns the delivery days whose plan changed.

    Each shipment remembers the last feedback applied to it; only later feedback (by time,
    then id) is applied, so a re-run applies nothing twice, whatever the order of kinds."""
    from pyspark.sql import functions as F

    c, p = summary.counts, cfg["proactive"]
    shipments = read_pandas(spark, "proactive_shipments", cfg)
    fb = Tables(spark, cfg).read("feedback").filter(
        F.col("kind").isin(*CUSTOMER_KINDS, *PROOF_KINDS)
        & (F.col("feedback_ts") < F.lit(str(as_date(dt) + timedelta(days=1))).cast("timestamp"))).toPandas()
    known = fb.reference_id.isin(set(shipments.shipment_id))
    c["feedback_unknown_shipment"] = int((~known).sum())
    fb = fb[known]
    refused = refusals(fb, shipments, cfg["secrets"])
    for reason, n in refused.dropna().value_counts().items():
        c[f"feedback_refused_{reason}"] = int(n)
    fb = fb[refused.isna()].sort_values(["feedback_ts", "feedback_id"])
    if not len(shipments):
        return set()
    fb = fb[unapplied(fb, shipments)]
    now = summary.now
    s = shipments.set_index("shipment_id")
    touched_days, cancelled, failed, proven = apply_events(s, fb, now, c)
    assumed, expired = close_past_days(s, as_date(dt), int(p["proof_grace_days"]), now, c)
    changed = s.index.isin(set(fb.reference_id)) | assumed.to_numpy() | expired.to_numpy()
    write_shipments(spark, cfg, s[changed].reset_index()[columns_of("proactive_shipments")])
    release(spark, cfg, cancelled, "cancelled", summary)
    release(spark, cfg, failed, "delivery_failed", summary)
    release(spark, cfg, s.index[expired], "expired", summary)
    release(spark, cfg, proven + list(s.index[assumed]), "delivered", summary)
    if cancelled:
        notify(spark, cfg, s.loc[cancelled].reset_index(), "cancelled", dt, run_id, now)
    postponed = [r.reference_id for r in fb.itertuples() if r.kind == "shipment_postpone"
                 and s.loc[r.reference_id].status == "postponed"]
    if postponed:
        notify(spark, cfg, s.loc[sorted(set(postponed))].reset_index(), "postponed", dt, run_id, now)
    return touched_days


def apply_events(s: pd.DataFrame, fb: pd.DataFrame, now, c) -> tuple[set, list, list, list]:
    """Pure: apply the unapplied feedback ``fb`` (time order) to the shipments ``s``
    (indexed by shipment id, changed in place). Returns (delivery days whose plan changed,
    cancelled, failed, delivered-with-proof shipment ids); ``c`` counts what happened."""
    touched_days, cancelled, failed, proven = set(), [], [], []
    for r in fb.itertuples():
        row = s.loc[r.reference_id]
        if row.status in FINAL:
            c["feedback_after_final_status"] += 1
            continue
        day = as_date(row.delivery_date)
        if r.kind in CUSTOMER_KINDS:
            if pd.Timestamp(r.feedback_ts).date() > day:
                c["feedback_after_delivery_day"] += 1
                continue
            touched_days.add(day)
        if r.kind in PROOF_KINDS:  # the van was there: the plan of the day is history
            ok = r.kind == "shipment_delivered"
            s.loc[r.reference_id, ["status", "status_reason"]] = \
                ["delivered", "proof of delivery"] if ok else ["failed", "delivery failed (dispatch)"]
            (proven if ok else failed).append(r.reference_id)
            c["proof_delivered" if ok else "proof_failed"] += 1
        elif r.kind == "shipment_cancel":
            s.loc[r.reference_id, ["status", "status_reason"]] = ["cancelled", "user cancelled"]
            cancelled.append(r.reference_id)
            c["feedback_cancelled"] += 1
        elif r.kind == "shipment_postpone":
            days = int(r.postpone_days) if pd.notna(r.postpone_days) and int(r.postpone_days) > 0 else 1
            new_day = day + timedelta(days=days)
            ws, we = pd.Timestamp(row.window_start) + pd.Timedelta(days=days), pd.Timestamp(row.window_end) + pd.Timedelta(days=days)
            s.loc[r.reference_id, ["delivery_date", "window_start", "window_end", "status", "status_reason",
                                   "route_id", "planned_arrival", "added_km"]] = \
                [new_day, ws.to_pydatetime(), we.to_pydatetime(), "postponed", f"user postponed {days} day(s)", None, None, None]
            touched_days.add(new_day)
            c["feedback_postponed"] += 1
        else:
            s.loc[r.reference_id, ["status", "status_reason"]] = ["confirmed", "user accepted"]
            c["feedback_confirmed"] += 1
        s.loc[r.reference_id, ["feedback_id", "updated_at"]] = [r.feedback_id, now]
    return touched_days, cancelled, failed, proven


def close_past_days(s: pd.DataFrame, today, grace: int, now, c) -> tuple[pd.Series, pd.Series]:
    """Pure: close delivery days before ``today`` in ``s`` (in place). A routed shipment
    waits ``grace`` days for dispatch's proof (its stock stays reserved), then counts as
    delivered; one never routed is dropped. Returns the (assumed delivered, expired) masks."""
    day_of = pd.to_datetime(s.delivery_date).dt.date
    past = (day_of < today) & s.status.isin(ACTIVE)
    routed = past & s.route_id.notna() & s.status.isin(["notified", "confirmed"])
    assumed = routed & (day_of < today - timedelta(days=grace))
    expired = past & ~routed
    s.loc[assumed, ["status", "status_reason", "updated_at"]] = \
        ["delivered", f"no proof of delivery within {grace} day(s): taken as delivered", now]
    s.loc[expired, ["status", "status_reason", "updated_at"]] = ["dropped", "delivery day passed without a route", now]
    c["shipments_delivered_assumed"] = int(assumed.sum())
    c["shipments_awaiting_proof"] = int((routed & ~assumed).sum())
    c["shipments_expired"] = int(expired.sum())
    return assumed, expired
