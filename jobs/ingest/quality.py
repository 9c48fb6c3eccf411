"""Great Expectations 1.x suites (expectations/<dataset>.json) run inside ingestion.

The contract rules (types, required, ranges, allowed values, references) are enforced row
by row in Spark by ``jobs.ingest``; the GX suite of a dataset adds the plausibility checks
that a data-quality owner maintains (price sanity, text lengths, timestamps not in the
future...). Rows a row-level expectation flags are returned by ``_row_id`` so ingestion
can quarantine them; results are rendered into Data Docs under ``BUNDLECAST_HOME/gx``.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bundlecast.jobs.core.config import PROJECT_ROOT

SUITES_DIR = PROJECT_ROOT / "expectations"
ROW_ID = "_row_id"
# A GX file context reads and rewrites its YAML and JSON stores: one dataset at a time, even
# when ingestion runs datasets on several threads.
_GX_LOCK = threading.Lock()


@dataclass
class SuiteResult:
    success: bool
    flagged: dict[int, list[str]] = field(default_factory=dict)  # _row_id -> reasons
    failed_expectations: list[str] = field(default_factory=list)
    evaluated: int = 0
    # Failed expectations that could not name their rows (an exception inside GX, or fewer
    # row ids than unexpected values): the dataset must not be published blind.
    unattributed: list[str] = field(default_factory=list)


def suite_path(dataset: str) -> Path:
    return SUITES_DIR / f"{dataset}.json"


def load_suite_definition(dataset: str) -> dict | None:
    path = suite_path(dataset)
    return json.loads(path.read_text()) if path.exists() else None


def _context(project_root: str):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=project_root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suite(df, dataset: str, project_root: str, build_docs: bool = True) -> SuiteResult:
    """Validate a Spark DataFrame (which must carry ``_row_id``) with the dataset's suite."""
    definition = load_suite_definition(dataset)
    if not definition or not definition.get("expectations"):
        return SuiteResult(success=True)
    with _GX_LOCK:
        return _run_suite(df, dataset, definition, project_root, build_docs)


def _run_suite(df, dataset: str, definition: dict, project_root: str, build_docs: bool) -> SuiteResult:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = _context(project_root)
    source = context.data_sources.add_or_update_spark("bundlecast_spark")
    asset = next((a for a in source.assets if a.name == dataset), None) or source.add_dataframe_asset(dataset)
    batch = next((b for b in asset.batch_definitions if b.name == "run"), None) \
        or asset.add_batch_definition_whole_dataframe("run")
    suite = gx.ExpectationSuite(name=dataset, meta=definition.get("meta", {}))
    for exp in definition["expectations"]:
        suite.add_expectation_configuration(ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"],
                                                                     meta=exp.get("meta", {})))
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=dataset, data=batch, suite=suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if build_docs else []
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=dataset, validation_definitions=[validation], actions=actions,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]}))
    result = checkpoint.run(batch_parameters={"dataframe": df})
    out = SuiteResult(success=bool(result.success))
    for run_result in result.run_results.values():
        for r in run_result.results:
            out.evaluated += 1
            if r.success:
                continue
            kwargs = r.expectation_config.kwargs
            reason = f"expectation:{r.expectation_config.type}" + (f":{kwargs['column']}" if "column" in kwargs else "")
            out.failed_expectations.append(reason)
            named = 0
            for entry in (r.result or {}).get("unexpected_index_list") or []:
                if isinstance(entry, dict) and ROW_ID in entry:
                    out.flagged.setdefault(int(entry[ROW_ID]), []).append(reason)
                    named += 1
            info = r.exception_info if isinstance(r.exception_info, dict) else {}
            raised = info.get("raised_exception") or any(isinstance(v, dict) and v.get("raised_exception")
                                                         for v in info.values())
            if raised or int((r.result or {}).get("unexpected_count") or 0) > named:
                out.unattributed.append(reason)
    return out


def build_data_docs(project_root: str) -> None:
    """Render the Data Docs site once for a run's validations (not once per dataset: each
    build re-renders the whole site)."""
    with _GX_LOCK:
        _context(project_root).build_data_docs()


def data_docs_index(project_root: str) -> Path:
    return Path(project_root) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
