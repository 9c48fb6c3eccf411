"""Errors that reach a person as one clear line instead of a stack trace."""
from __future__ import annotations


class BundlecastError(Exception):
    """An error whose message is meant for the operator, on one line."""


class PermanentError(BundlecastError):
    """An error a retry cannot fix (the same input gives the same refusal): the scheduler
    fails the task at once instead of retrying it (exit code :data:`PERMANENT_EXIT`)."""


class ConfigError(PermanentError):
    """Configuration or catalog is missing or inconsistent."""


class DataQualityError(PermanentError):
    """A dataset's quarantined share passed the configured threshold."""


# The exit code of a step that failed with a PermanentError (any other failure exits 1).
PERMANENT_EXIT = 3


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
