"""Shared by the proactive modules: shipment states, feedback kinds, and pandas <-> catalog frames."""
from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.delta import catalog_frame
from bundlecast.jobs.core.tables import Tables

LEDGER = "__ledger__"


ACTIVE = ("planned", "notified", "confirmed", "postponed")


FINAL = ("cancelled", "delivered", "failed", "dropped")


NOTIFIED = ("notified", "confirmed", "cancelled", "postponed", "delivered", "failed")


CUSTOMER_KINDS = ("shipment_cancel", "shipment_postpone", "shipment_accept")


PROOF_KINDS = ("shipment_delivered", "shipment_failed")  # dispatch's proof of delivery


def as_date(d) -> date:
    return d if isinstance(d, date) and not isinstance(d, datetime) else date.fromisoformat(str(d)[:10])


def read_pandas(spark, name: str, cfg: dict) -> pd.DataFrame:
    frame = Tables(spark, cfg).read(name).toPandas()
    return frame if len(frame) else pd.DataFrame(columns=columns_of(name))


def columns_of(name: str) -> list[str]:
    return [c.name for c in catalog.table(name).columns]


def pandas_records(frame: pd.DataFrame, name: str) -> list[dict]:
    """pandas rows as plain dicts for Spark: NaN/NaT -> None, Timestamps -> datetime, dates
    as ISO strings for ``dt`` (``catalog_frame`` casts it)."""
    def clean(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return list(v)
        if v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, pd.Timestamp):
            return v.to_pydatetime(warn=False)
        return v.item() if isinstance(v, np.generic) else v
    ints = {c.name for c in catalog.table(name).columns if c.spark_type in ("int", "long", "bigint")}
    out = [{k: clean(v) for k, v in r.items()} for r in frame[columns_of(name)].to_dict("records")]
    for r in out:
        for k in ints:
            if r[k] is not None:
                r[k] = int(r[k])
        if r.get("dt") is not None:
            r["dt"] = str(r["dt"])[:10]
    return out


def catalog_rows(spark, name: str, rows):
    if isinstance(rows, pd.DataFrame):
        rows = pandas_records(rows, name)
    return catalog_frame(spark, name, rows) if len(rows) else spark.createDataFrame([], catalog.table(name).ddl())
