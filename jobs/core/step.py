"""What a pipeline step declares about itself, and the one command line every step uses.

A :class:`Step` names the module that runs it, the catalog tables it reads and writes, its
modes and its extra arguments. From that one declaration come the step's command line
(``spark-submit jobs/submit.py STEP ...`` and ``bundlecast STEP ...``), the Airflow task's
inlets and outlets (``dags/_steps.py``) and the run record's step name. Importing this
module is cheap: nothing runs a step until :meth:`Step.run` imports its module.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True)
class Arg:
    """One extra argument of a step: ``--flag`` on the command line, ``dest`` in ``run()``.

    ``kind``: ``str`` (a value), ``list`` (comma-separated values), ``off`` (a switch that
    passes ``dest=False`` when given).
    """
    flag: str
    dest: str
    help: str = ""
    kind: str = "str"

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.kind == "off":
            parser.add_argument(self.flag, dest=self.dest, action="store_false", help=self.help)
        else:
            parser.add_argument(self.flag, dest=self.dest, help=self.help)

    def value(self, args: argparse.Namespace):
        raw = getattr(args, self.dest)
        if self.kind == "list" and raw is not None:
            return [v.strip() for v in raw.split(",") if v.strip()]
        return raw


@dataclass(frozen=True)
class Step:
    """A pipeline step: ``module.run(spark, dt, [mode=...], run_id=..., **args)``."""
    name: str
    module: str
    help: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    modes: tuple[str, ...] = ()          # the first is the default
    writes_by_mode: dict = field(default_factory=dict)  # mode -> tables, where a mode writes less
    args: tuple[Arg, ...] = ()

    def outputs(self, mode: str | None = None) -> tuple[str, ...]:
        """The tables a run of this step (in ``mode``) writes."""
        return tuple(self.writes_by_mode.get(mode or self.default_mode, self.writes))

    @property
    def default_mode(self) -> str | None:
        return self.modes[0] if self.modes else None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--date", type=iso_date, required=True, help="run date YYYY-MM-DD")
        if self.modes:
            parser.add_argument("--mode", choices=list(self.modes), default=self.default_mode)
        parser.add_argument("--run-id", help="pipeline run id (default: a new one)")
        for arg in self.args:
            arg.add_to(parser)

    def kwargs(self, args: argparse.Namespace) -> dict:
        """Keyword arguments of ``run()`` from parsed command-line arguments."""
        kw = {"run_id": args.run_id, **{a.dest: a.value(args) for a in self.args}}
        if self.modes:
            kw["mode"] = args.mode
        return kw

    def run(self, spark, dt: str, **kwargs):
        return importlib.import_module(self.module).run(spark, dt, **kwargs)


def iso_date(text: str) -> str:
    """An argparse type: a YYYY-MM-DD date, normalised (anything else is refused)."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def main(steps: dict[str, Step], argv: list[str] | None = None) -> int:
    """``STEP --date D [--mode M] [--run-id ID] [step args]``: run one step in this process
    (under spark-submit, the session spark-submit launched). Errors are one line."""
    from bundlecast.jobs.core.cli_support import run_main

    parser = argparse.ArgumentParser(prog="bundlecast-step", description="Run one bundlecast pipeline step.")
    sub = parser.add_subparsers(dest="step", required=True)
    for step in steps.values():
        step.add_arguments(sub.add_parser(step.name, help=step.help))
    args = parser.parse_args(argv)
    step = steps[args.step]

    def body():
        from bundlecast.jobs.core.spark import get_spark
        step.run(get_spark(f"bundlecast-{step.name}"), args.date, **step.kwargs(args))
    return run_main(body)
