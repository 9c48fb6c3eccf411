"""Errors that reach a person as one clear line instead of a stack trace."""
from __future__ import annotations


class BundlecastError(Exception):
    """An error whose message is meant for the operator, on one line."""


class ConfigError(BundlecastError):
    """Configuration or catalog is missing or inconsistent."""


class DataQualityError(BundlecastError):
    """A dataset's quarantined share passed the configured threshold."""


def one_line(exc: BaseException) -> str:
    """Reduce any exception (Py4J and Spark ones included) to a single readable line."""
    if isinstance(exc, BundlecastError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = str(exc).strip()
    # Spark/Py4J errors carry a JVM stack trace after the first meaningful line.
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("at ", "Traceback", "JVM stacktrace", "py4j")):
            return f"{type(exc).__name__}: {line}"[:500]
    return type(exc).__name__
