"""Reads of the ingest step: the files landed for a dataset and date, each parsed on its own
(``parse.py``) into all-string columns named as in the contract, plus where each record
came from (file, line, raw bytes) and why it could not be parsed, if it could not."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bundlecast.jobs.core.catalog import DatasetSpec
from bundlecast.jobs.ingest.parse import FileRefused, Records, read_file

SOURCE, LINE, RAW, PARSE_ERROR, RAW_TEXT = "_source_file", "_line", "_raw", "_parse_error", "_raw_text"


@dataclass
class RawFile:
    path: str
    size_bytes: int
    unreadable: str | None = None  # the reason, when the file is refused as a whole
    rows: int = 0                  # records parsed
    staged: str | None = None      # its records as a Parquet file Spark reads


def list_raw_files(raw_root: str, dataset: str, dt: str) -> list[Path]:
    """Every file landed for (dataset, dt), hidden and marker files included (they are
    listed as not read, never skipped silently)."""
    folder = Path(raw_root) / dataset / f"dt={dt}"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_files(paths: list[Path], spec: DatasetSpec, encoding: str, staging: Path) -> list[RawFile]:
    """Each file parsed by itself; one that cannot be read as the dataset is refused alone.

    Each file's records are written to ``staging`` as Parquet at once and let go, so the
    driver holds one file at a time and Spark reads the records natively, in parallel."""
    import pyarrow.parquet as pq

    files = []
    for n, path in enumerate(paths):
        raw = RawFile(str(path), path.stat().st_size)
        try:
            table = file_table(read_file(path, spec.column_names, encoding), str(path))
        except FileRefused as exc:
            raw.unreadable = str(exc)
        except OSError as exc:
            raw.unreadable = f"cannot read the file: {exc.strerror or exc}"
        else:
            raw.rows = table.num_rows
            if table.num_rows:
                staging.mkdir(parents=True, exist_ok=True)
                raw.staged = str(staging / f"part-{n:05d}.parquet")
                pq.write_table(table, raw.staged)
        files.append(raw)
    return files


def file_table(records: Records, path: str):
    """One file's records as an Arrow table, every column typed even when all null."""
    import pyarrow as pa

    n = len(records)
    arrays = {c: pa.array(records.values[c], pa.string()) for c in records.columns}
    arrays[SOURCE] = pa.array([path] * n, pa.string())
    arrays[LINE] = pa.array(records.lines, pa.int64())
    arrays[RAW] = pa.array(records.raws, pa.binary())
    arrays[PARSE_ERROR] = pa.array(records.errors, pa.string())
    arrays[RAW_TEXT] = pa.array(records.texts, pa.string())
    return pa.table(arrays)


def read_raw(spark, files: list[RawFile]):
    """The staged records of the readable files as a Spark frame (None when there are none)."""
    staged = [f.staged for f in files if f.staged]
    return spark.read.parquet(*staged) if staged else None
