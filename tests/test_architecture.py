"""The shape of the code: one namespace, and data flowing one way.

Every import of every module is read with ``ast`` (no import runs). A step may import
``core``, ``models`` and steps before it in the data flow, never one after it; ``core``
and ``models`` import no step; nothing imports a top-level ``jobs`` or ``models``.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Data flow: raw -> validated -> scores and predictions -> decisions -> exports.
FLOW = ["ingest", "relationships", "forecast", "need", "value", "bundles", "proactive", "offers", "experiments",
        "export"]
TOP = ("pipeline", "submit", "tools")  # above the steps: they may import any step


def _modules():
    for folder in ("jobs", "models", "dags"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield folder, path


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _layer(folder: str, path: Path) -> str:
    """'core', 'models', 'dags', a step name, or one of TOP."""
    if folder != "jobs":
        return folder
    rel = path.relative_to(ROOT / "jobs")
    head = rel.parts[0].removesuffix(".py")
    return "jobs" if head == "__init__" else head


def test_nothing_imports_a_top_level_jobs_or_models():
    bad = [f"{p.relative_to(ROOT)}: {name}" for _, p in _modules() for name in _imports(p)
           if name.split(".")[0] in ("jobs", "models")]
    bad += [f"{p.relative_to(ROOT)}: {name}" for p in sorted((ROOT / "tests").rglob("*.py")) for name in _imports(p)
            if name.split(".")[0] in ("jobs", "models")]
    assert bad == []


@pytest.mark.parametrize("folder,path", list(_modules()), ids=lambda v: str(v).split("/work/")[-1])
def test_imports_follow_the_data_flow(folder, path):
    layer = _layer(folder, path)
    for name in _imports(path):
        parts = name.split(".")
        if parts[:2] != ["bundlecast", "jobs"] or len(parts) < 3:
            continue
        target = parts[2]
        if layer in ("core", "models"):
            assert target == "core", f"{path.relative_to(ROOT)} ({layer}) imports {name}"
        elif layer in FLOW and target in FLOW:
            assert FLOW.index(target) <= FLOW.index(layer), \
                f"{path.relative_to(ROOT)} ({layer}) reaches down the flow into {name}"
        elif layer in FLOW:
            assert target not in TOP, f"{path.relative_to(ROOT)} ({layer}) imports {name}, which sits above it"


def test_each_step_package_says_what_it_reads_and_writes_and_how_to_run_it():
    """The package docstring names every table the step declares (jobs/pipeline.py) and
    its command line, so the two cannot drift apart."""
    import importlib

    from bundlecast.jobs.pipeline import STEPS

    for name, step in STEPS.items():
        doc = importlib.import_module(f"bundlecast.jobs.{name}").__doc__ or ""
        assert f"spark-submit jobs/submit.py {name}" in doc, name
        for table in step.reads + step.writes:
            assert f"``{table}``" in doc, f"{name}: {table}"
