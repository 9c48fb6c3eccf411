"""DAG integrity: every DAG loads, has tags, retries and docs, no cycles, no work at parse."""
import os
import subprocess
import sys

import pytest

from bundlecast.jobs.tools.airflow_run import DAGS_DIR, airflow_env

EXPECTED = {"bundlecast_nightly", "bundlecast_hourly"}


@pytest.fixture(scope="module")
def dagbag(cfg, tmp_path_factory):
    env = {k: v for k, v in airflow_env(cfg).items() if k.startswith(("AIRFLOW", "BUNDLECAST"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.models.dagbag import DagBag
    yield DagBag(dag_folder=str(DAGS_DIR))
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_dags_load_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert EXPECTED <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_conventions(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags and "bundlecast" in dag.tags
    assert dag.doc_md and dag_id in dag.doc_md
    assert dag.fileloc.endswith(f"{dag_id}.py")
    for task in dag.tasks:
        assert task.retries >= 0
    assert any(t.retries > 0 for t in dag.tasks)
    ingest = [t for t in dag.tasks if t.task_id.startswith("ingest")][0]
    assert type(ingest).__mro__[1].__name__ == "SparkSubmitOperator"
    assert ingest.outlets, "ingestion declares the tables it produces as Assets"
    assert [t.task_id for t in dag.tasks if not t.upstream_task_ids] == ["take_lease"]  # one root, no cycle
    assert ingest.upstream_task_ids == {"take_lease"}
    end = dag.get_task("end_of_run")
    assert end.is_teardown and not end.downstream_task_ids  # gives the lease back whatever happened


def test_the_nightly_follows_the_data(dagbag):
    """Steps with no table between them are not ordered (they run side by side where tasks
    are their own spark-submits); each step waits for the ones whose tables it reads."""
    dag = dagbag.dags["bundlecast_nightly"]
    for independent in ("relationships", "forecast", "user_value"):
        assert dag.get_task(independent).upstream_task_ids == {"ingest"}, independent
    assert {"relationships", "forecast"} <= dag.get_task("need_train").upstream_task_ids
    assert "proactive" in dag.get_task("offers").upstream_task_ids  # reserved stock is never offered
    assert "user_value" in dag.get_task("offers").upstream_task_ids


def test_parse_is_cheap_and_needs_no_connection(cfg):
    env = airflow_env(cfg)
    env.pop("AIRFLOW_CONN_BUNDLECAST_SPARK", None)
    code = ("import sys,time;t=time.time();sys.path.insert(0,sys.argv[1])\n"
            "import bundlecast_nightly, bundlecast_hourly\n"
            "print('pyspark' in sys.modules, round(time.time()-t,2))")
    out = subprocess.run([sys.executable, "-c", code, str(DAGS_DIR)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    spark_imported, seconds = out.stdout.split()
    assert spark_imported == "False"


def test_task_assets_come_from_the_step_declarations(dagbag):
    """Each Spark task's inlets and outlets are exactly what its step declares it reads
    and writes (bundlecast.jobs.pipeline), so a new table is declared once."""
    from bundlecast.jobs.pipeline import INGEST_OPS, STEPS

    seen = set()
    for dag_id in sorted(EXPECTED):
        for task in dagbag.dags[dag_id].tasks:
            if type(task).__mro__[1].__name__ != "SparkSubmitOperator":
                continue
            name, args = task.application_args[0], task.application_args
            declared = STEPS[name]
            mode = args[args.index("--mode") + 1] if "--mode" in args else None
            expected = declared.outputs(mode)
            if "--datasets" in args:
                expected = tuple(args[args.index("--datasets") + 1].split(",")) + INGEST_OPS
            assert task.application.endswith("jobs/submit.py")
            assert sorted(a.name for a in task.outlets) == sorted(f"bundlecast.{t}" for t in expected), task.task_id
            assert sorted(a.name for a in task.inlets) == sorted(f"bundlecast.{t}" for t in declared.reads), task.task_id
            seen.add(name)
    assert seen == set(STEPS)


def test_the_nightly_scheduled_at_two_on_day_after_processes_the_day(dagbag):
    """The scheduler fires the nightly at 02:00 on D + 1 and every Spark task and the export
    get landing day D (from the data interval; ``ds`` would be D + 1)."""
    import jinja2
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    for dag_id, due, day in (("bundlecast_nightly", (2026, 11, 21, 2, 0), "2026-11-20"),
                             ("bundlecast_hourly", (2026, 11, 21, 0, 15), "2026-11-21")):
        dag = dagbag.dags[dag_id]
        scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable  # what the scheduler runs
        after = pendulum.datetime(*due) - pendulum.duration(minutes=1)
        info = scheduled.next_dagrun_info(last_automated_data_interval=None,
                                          restriction=TimeRestriction(earliest=after, latest=None, catchup=True))
        assert info.run_after == pendulum.datetime(*due), dag_id
        context = {"data_interval_start": info.data_interval.start, "data_interval_end": info.data_interval.end,
                   "run_id": "scheduled__x", **dag.user_defined_macros}
        for task in dag.tasks:
            if type(task).__mro__[1].__name__ != "SparkSubmitOperator":
                continue
            rendered = [jinja2.Template(a).render(**context) for a in task.application_args]
            assert rendered[rendered.index("--date") + 1] == day, (dag_id, task.task_id, rendered)
            if task.task_id == "ingest_hourly":  # reads exactly the rows of its interval
                assert rendered[rendered.index("--until") + 1] == "2026-11-21T00:15:00+00:00"


@pytest.mark.parametrize("code, retried", [(3, False), (1, True)])
def test_a_failure_a_retry_cannot_fix_fails_the_task_at_once(dagbag, monkeypatch, capsys, code, retried):
    """Exit 3 (quarantine threshold, configuration) raises AirflowFailException, which
    Airflow does not retry; any other failure raises an ordinary error, which it retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from bundlecast.jobs.tools import driver

    task = dagbag.dags["bundlecast_nightly"].get_task("ingest")
    monkeypatch.setattr(driver, "enabled", lambda cfg=None: True)
    monkeypatch.setattr(driver, "run_step", lambda argv, cfg=None, echo=print: (echo("bundlecast: error: x"), code)[1])
    with pytest.raises(Exception) as err:
        task.execute({})
    assert isinstance(err.value, AirflowFailException) is not retried
    out = capsys.readouterr().out
    assert "[bundlecast] ingest started" in out
