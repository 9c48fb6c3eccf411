"""Shared benchmark helpers."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil


def bench_world(scale: str) -> Path:
    """Point BUNDLECAST_HOME at the benchmark world of ``scale`` (under the current home,
    sharing its jar cache); call before importing any bundlecast module. Returns the home."""
    root = Path(os.environ.get("BUNDLECAST_HOME", "var")).resolve()
    home = root / f"bench-{scale}"
    os.environ["BUNDLECAST_HOME"] = str(home)
    os.environ.setdefault("BUNDLECAST_JAR_CACHE", str(root / "jars"))
    return home


class PeakMemory:
    """Samples the resident memory of this process and its children (the Spark JVM)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
