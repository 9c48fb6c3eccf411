"""The demo world's fixed parts: scales, sites, categories, regions, raw formats, and the
writer that lands a dataset's rows in the raw zone the way an upstream system would."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Scale:
    users: int
    items_per_site: int
    days: int
    views_per_active_user: float
    chunk_days: int
    active_share: float  # share of users active on an average day


SCALES = {
    "tiny": Scale(users=150, items_per_site=25, days=42, views_per_active_user=3.0, chunk_days=42, active_share=0.2),
    # `make run`'s world: tiny, with the half year of orders the user-value model needs
    # (2 x value.horizon_days) and room for a week of offers before the demo date.
    "demo": Scale(users=150, items_per_site=25, days=200, views_per_active_user=3.0, chunk_days=50, active_share=0.2),
    # Enough repeat behaviour on few items for the planted structure to be learnable (tests).
    "test": Scale(users=1_000, items_per_site=40, days=60, views_per_active_user=4.0, chunk_days=60, active_share=0.3),
    "small": Scale(users=3_000, items_per_site=300, days=90, views_per_active_user=4.0, chunk_days=30, active_share=0.2),
    # ~10M events: 100k users x 180 days x ~0.55 events per user-day
    "medium": Scale(users=100_000, items_per_site=3_334, days=180, views_per_active_user=4.5, chunk_days=10,
                    active_share=0.06),
    # ~100M events, written two days at a time
    "large": Scale(users=1_000_000, items_per_site=16_667, days=180, views_per_active_user=4.5, chunk_days=2,
                   active_share=0.06),
}
SITES = [
    ("grocery", "Network Grocery", "GB", "GBP", "Europe/London"),
    ("home", "Network Home & Kitchen", "GB", "GBP", "Europe/London"),
    ("pharmacy", "Network Pharmacy", "GB", "GBP", "Europe/London"),
]
CATEGORIES = {
    "grocery": ["grocery/coffee", "grocery/dairy", "grocery/snacks", "grocery/drinks", "grocery/frozen"],
    "home": ["home/kitchen", "home/cleaning", "home/garden", "home/rain", "home/bath"],
    "pharmacy": ["pharmacy/baby", "pharmacy/vitamins", "pharmacy/skincare", "pharmacy/cold", "pharmacy/sun"],
}
REGIONS = ["north", "south", "east", "west"]
REGION_CENTRES = {"north": (53.48, -2.24), "south": (51.45, -0.97), "east": (52.63, 1.30), "west": (51.45, -2.59)}
SEGMENTS = ["family", "single", "senior", "business"]
# Where the chosen format varies, the contract's three formats are all exercised.
FORMATS = {"sites": "csv", "warehouses": "csv", "items": "jsonl", "users": "jsonl", "events": "jsonl",
           "orders": "csv", "order_lines": "csv", "reviews": "jsonl", "inventory": "parquet",
           "weather": "csv", "calendar_events": "csv", "routes": "csv", "competitor_prices": "parquet",
           "feedback": "jsonl"}


def _iso(ts: np.ndarray) -> np.ndarray:
    """datetime64[s] UTC -> ISO-8601 strings with an explicit Z."""
    return np.char.add(np.datetime_as_string(ts.astype("datetime64[s]"), unit="s"), "Z")


class RawWriter:
    """Writes a dataset's rows into raw/<dataset>/dt=<date>/ in the dataset's format."""

    def __init__(self, raw_root: Path, landing_date: str, formats: dict[str, str]):
        self.raw_root, self.landing_date, self.formats = raw_root, landing_date, formats
        self.parts: dict[str, int] = {}
        self.rows: dict[str, int] = {}

    def write(self, dataset: str, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        folder = self.raw_root / dataset / f"dt={self.landing_date}"
        folder.mkdir(parents=True, exist_ok=True)
        part = self.parts.get(dataset, 0)
        self.parts[dataset] = part + 1
        self.rows[dataset] = self.rows.get(dataset, 0) + len(frame)
        fmt = self.formats[dataset]
        path = folder / f"part-{part:05d}.{fmt}"
        if fmt == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            # Parquet carries real UTC timestamps instead of ISO strings.
            for name in frame.columns:
                if name.endswith("_ts") or name in ("shift_start", "shift_end", "window_start", "window_end"):
                    idx = table.schema.get_field_index(name)
                    values = pd.to_datetime(frame[name], utc=True)
                    table = table.set_column(idx, name, pa.array(values, type=pa.timestamp("us", tz="UTC")))
            pq.write_table(table, path)
        elif fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_json(path, orient="records", lines=True, date_format="iso")
