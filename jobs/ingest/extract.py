"""Reads of the ingest step: the files landed for a dataset and date, read as all-string
columns named as in the contract."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from bundlecast.jobs.core.catalog import DatasetSpec

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
CORRUPT = "_corrupt_record"


@dataclass
class RawFile:
    path: str
    size_bytes: int
    format: str | None
    unreadable: str | None = None  # reason, when the file cannot be read at all


def list_raw_files(raw_root: str, dataset: str, dt: str) -> list[RawFile]:
    """Every file landed for (dataset, dt), each probed so an unreadable one is caught here."""
    folder = Path(raw_root) / dataset / f"dt={dt}"
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))):
        fmt = FORMATS.get(path.suffix.lower())
        raw = RawFile(str(path), path.stat().st_size, fmt)
        if fmt is None:
            raw.unreadable = f"unsupported file format {path.suffix or '(no extension)'}: expected .jsonl, .csv or .parquet"
        elif fmt == "parquet":
            import pyarrow.parquet as pq
            try:
                pq.read_schema(path)
            except Exception as exc:  # truncated or not Parquet at all
                raw.unreadable = f"not a readable Parquet file: {str(exc).splitlines()[0][:200]}"
        elif fmt == "csv":
            try:
                with open(path, newline="", encoding="utf-8") as fh:
                    header = next(csv.reader(fh), None)
                if not header:
                    raw.unreadable = "CSV file has no header row"
            except UnicodeDecodeError:
                raw.unreadable = "CSV file is not UTF-8 text"
        files.append(raw)
    return files


def _string_schema(columns: list[str]):
    from pyspark.sql.types import StringType, StructField, StructType
    return StructType([StructField(c, StringType(), True) for c in columns] + [StructField(CORRUPT, StringType(), True)])


def read_raw(spark, files: list[RawFile], spec: DatasetSpec):
    """Read the readable files as all-string columns named as in the contract, plus
    ``_source_file`` and ``_corrupt_record`` (the raw text of a line that could not be parsed)."""
    from pyspark.sql import functions as F

    wanted = spec.column_names
    frames = []
    json_files = [f.path for f in files if f.format == "json" and not f.unreadable]
    if json_files:
        frames.append(spark.read.schema(_string_schema(wanted)).option("mode", "PERMISSIVE")
                      .option("columnNameOfCorruptRecord", CORRUPT).json(json_files)
                      .withColumn("_source_file", F.col("_metadata.file_path")))
    csv_by_header: dict[tuple, list[str]] = {}
    for f in files:
        if f.format == "csv" and not f.unreadable:
            with open(f.path, newline="", encoding="utf-8") as fh:
                header = tuple(h.strip().lower() for h in next(csv.reader(fh)))
            csv_by_header.setdefault(header, []).append(f.path)
    for header, paths in csv_by_header.items():
        frame = (spark.read.schema(_string_schema(list(header))).option("header", True)
                 .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
                 .option("enforceSchema", True).csv(paths)
                 .withColumn("_source_file", F.col("_metadata.file_path")))
        frames.append(frame.select(*[F.col(f"`{c}`") if c in header else F.lit(None).cast("string").alias(c)
                                     for c in wanted], CORRUPT, "_source_file"))
    for f in files:
        if f.format == "parquet" and not f.unreadable:
            frame = spark.read.parquet(f.path)
            types = dict(frame.dtypes)
            cols = []
            for c in wanted:
                if c not in types:
                    cols.append(F.lit(None).cast("string").alias(c))
                elif types[c].startswith("timestamp"):
                    cols.append(F.date_format(F.col(c), "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(c))
                else:
                    cols.append(F.col(c).cast("string").alias(c))
            frames.append(frame.select(*cols, F.lit(None).cast("string").alias(CORRUPT),
                                       F.col("_metadata.file_path").alias("_source_file")))
    if not frames:
        return None
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result.select(*wanted, CORRUPT, "_source_file")
