"""Pure transforms of the ingest step: typing and the contract's rules row by row,
de-duplication, the accounting."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bundlecast.jobs.core.catalog import DatasetSpec, Limits
from bundlecast.jobs.ingest.extract import LINE, PARSE_ERROR, RAW, RAW_TEXT, SOURCE

ZONE_PATTERN = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"


@dataclass
class AuditRow:
    dataset: str
    dt: str
    run_id: str
    files_read: int
    files_quarantined: int
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    duplicates_dropped: int
    quarantine_share: float
    top_reasons: str
    expectations_passed: bool
    status: str
    landing_digest: str = ""
    rows_deferred: int = 0  # dated at or after an hourly run's --until: left for a later run

    def balanced(self) -> bool:
        return self.rows_read == self.rows_accepted + self.rows_quarantined + self.duplicates_dropped + self.rows_deferred


def _typed(column, raw):
    """(typed value, cast-failure condition) for one contract column over its raw string."""
    from pyspark.sql import functions as F

    value = F.when(F.trim(raw) == "", F.lit(None)).otherwise(F.trim(raw))
    if column.type == "boolean":
        lowered = F.lower(value)
        typed = F.when(lowered.isin("true", "1"), F.lit(True)).when(lowered.isin("false", "0"), F.lit(False))
    elif column.type == "timestamp":
        typed = F.when(value.rlike(ZONE_PATTERN), value.try_cast("timestamp"))
    elif column.type in ("int", "long"):
        # "3.0" is accepted as 3, "3.5" is not an integer.
        as_double = value.try_cast("double")
        typed = F.when(as_double == F.floor(as_double), as_double.try_cast(column.spark_type))
    else:
        typed = value.try_cast(column.spark_type)
    return value, typed


def _range_checks(c, typed, dt: str, bounds: Limits) -> list:
    """Checks every value of a type must pass whatever the column: finite numbers, dates and
    times between the contract's floor and the landing date plus the column's days ahead."""
    from datetime import date, timedelta

    from pyspark.sql import functions as F

    if c.type == "double":
        return [(F.isnan(typed) | typed.isin(float("inf"), float("-inf")), f"not_finite:{c.name}")]
    if c.type in ("date", "timestamp"):
        day = F.to_date(typed) if c.type == "timestamp" else typed
        latest = date.fromisoformat(dt) + timedelta(days=bounds.days_ahead_of(c))
        return [(day < F.lit(date.fromisoformat(bounds.earliest)), f"too_early:{c.name}"),
                (day > F.lit(latest), f"too_late:{c.name}")]
    return []


def _string_checks(c, raw, bounds: Limits) -> list:
    """Strings: the length limit, and no control characters (free text: no NUL)."""
    from pyspark.sql import functions as F

    if c.type != "string":
        return []
    control = raw.contains("\x00") if c.text else raw.rlike(r"\p{Cntrl}")
    return [(F.length(raw) > bounds.max_length(c), f"too_long:{c.name}"),
            (control, f"control_character:{c.name}")]


def validate(raw, spec: DatasetSpec, dt: str, references: dict | None = None, bounds: Limits | None = None):
    """Pure transform: raw all-string records -> typed rows with ``_reasons`` (empty when valid).

    ``raw`` carries the contract's columns as text plus ``_source_file``, ``_line``, ``_raw``
    (the record's bytes), ``_raw_text`` and ``_parse_error`` (see ``extract``). ``dt`` is the
    landing date the date ranges are measured from. ``references`` maps a contract
    reference reason (``unknown:site_id+item_id``) to a DataFrame of the referenced keys
    (named as this dataset's columns).
    """
    from pyspark.sql import functions as F

    bounds = bounds or Limits()
    checks, typed_cols = [], []
    for c in spec.columns:
        value, typed = _typed(c, F.col(f"`{c.name}`"))
        typed_cols.append(typed.alias(c.name))
        if c.required:
            checks.append((value.isNull(), f"missing:{c.name}"))
        bad_reason = f"bad_type:{c.name}"
        if c.type == "timestamp":
            checks.append((value.isNotNull() & ~value.rlike(ZONE_PATTERN), f"timestamp_without_zone:{c.name}"))
            checks.append((value.isNotNull() & value.rlike(ZONE_PATTERN) & typed.isNull(), bad_reason))
        else:
            checks.append((value.isNotNull() & typed.isNull(), bad_reason))
        if c.min is not None:
            checks.append((typed < F.lit(c.min), f"below_min:{c.name}"))
        if c.max is not None:
            checks.append((typed > F.lit(c.max), f"above_max:{c.name}"))
        if c.allowed:
            checks.append((value.isNotNull() & ~value.isin(*c.allowed), f"not_allowed:{c.name}"))
        checks += _range_checks(c, typed, dt, bounds) + _string_checks(c, F.col(f"`{c.name}`"), bounds)
    parsed = F.col(PARSE_ERROR).isNull()
    reasons = F.when(~parsed, F.array(F.col(PARSE_ERROR))).otherwise(
        F.array_compact(F.array(*[F.when(cond, F.lit(reason)) for cond, reason in checks])))
    lineage = [c for c in (SOURCE, LINE, RAW, RAW_TEXT) if c in raw.columns]  # the bytes may be kept aside
    out = raw.select(*typed_cols, *lineage, parsed.alias("_parsed"), reasons.alias("_reasons"))
    for ref in spec.refs:
        keys = (references or {}).get(ref.reason)
        if keys is None:
            continue
        flag = f"_ref_{'_'.join(ref.columns)}"
        known = keys.select(*ref.columns).dropDuplicates().withColumn(flag, F.lit(True))
        out = out.join(known, on=list(ref.columns), how="left")
        present = F.lit(True)
        for col in ref.columns:
            present = present & F.col(col).isNotNull()
        orphan = present & F.col(flag).isNull() & F.col("_parsed")
        out = (out.withColumn("_reasons", F.when(orphan, F.array_append("_reasons", F.lit(ref.reason)))
                              .otherwise(F.col("_reasons")))
               .drop(flag))
    return out.select(*spec.column_names, *lineage, "_reasons")


def quarantine_record():
    """The quarantine's two forms of a record: readable text and the exact bytes (base64)."""
    from pyspark.sql import functions as F

    text = F.coalesce(F.col(RAW_TEXT), F.decode(F.col(RAW), "UTF-8"))
    return [text.alias("record"), F.base64(F.col(RAW)).alias("record_base64")]


def deduplicate(valid, keys: list[str]):
    """Keep one row per natural key: the one from the last file in landing order, and
    within a file the last line."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(*keys).orderBy(F.col(SOURCE).desc(), F.col(LINE).desc())
    return valid.withColumn("_n", F.row_number().over(order)).filter("_n = 1").drop("_n")


def top_reasons(counter: Counter, n: int = 5) -> list[tuple[str, int]]:
    return counter.most_common(n)


def threshold_message(dataset: str, quarantined: int, read: int, threshold: float, reasons: list) -> str:
    listed = ", ".join(f"{r} ({n})" for r, n in reasons) or "none"
    return (f"{dataset}: {quarantined} of {read} rows quarantined ({quarantined / max(read, 1):.1%} > "
            f"{threshold:.1%} threshold); top reasons: {listed}")


_VALID, _REJECTED = "\x00valid", "\x00rejected"


def tally(checked) -> tuple[int, int, Counter]:
    """(valid rows, rejected rows, rows per reason) of validated rows, in one pass."""
    from pyspark.sql import functions as F

    tags = F.when(F.size("_reasons") == 0, F.array(F.lit(_VALID))) \
        .otherwise(F.array_append("_reasons", F.lit(_REJECTED)))
    counts = Counter({r["tag"]: r["count"] for r in
                      checked.select(F.explode(tags).alias("tag")).groupBy("tag").count().collect()})
    return counts.pop(_VALID, 0), counts.pop(_REJECTED, 0), counts
