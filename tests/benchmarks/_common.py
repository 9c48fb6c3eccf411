"""Shared benchmark helpers."""
from __future__ import annotations

import threading
import time

import psutil


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
