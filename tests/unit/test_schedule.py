"""The landing day and cut-off a scheduled run processes come from its data interval,
whatever the clock says when it runs (bundlecast.jobs.core.schedule), checked against
Airflow's own trigger timetable at odd hours."""
from datetime import datetime, timedelta, timezone

import pytest

from bundlecast.jobs.core import schedule

UTC = timezone.utc


def _core_timetable(kind: str):
    from airflow.timetables.trigger import CronTriggerTimetable

    cron, interval = ((schedule.NIGHTLY_CRON, schedule.NIGHTLY_INTERVAL) if kind == "nightly"
                      else (schedule.HOURLY_CRON, schedule.HOURLY_INTERVAL))
    return CronTriggerTimetable(cron, timezone="UTC", interval=interval)


def _scheduled_runs(kind: str, after: datetime, n: int):
    """The next ``n`` runs Airflow's scheduler would create after ``after`` (catch-up on)."""
    import pendulum
    from airflow.timetables.base import TimeRestriction

    after = pendulum.instance(after)
    table, last, runs = _core_timetable(kind), None, []
    for _ in range(n):
        info = table.next_dagrun_info(last_automated_data_interval=last,
                                      restriction=TimeRestriction(earliest=after, latest=None, catchup=True))
        runs.append(info)
        last = info.data_interval
    return runs


def test_the_nightly_due_at_two_on_the_next_day_processes_the_previous_day():
    runs = _scheduled_runs("nightly", datetime(2026, 11, 20, 0, 30, tzinfo=UTC), 3)
    assert [r.run_after for r in runs] == [datetime(2026, 11, d, 2, 0, tzinfo=UTC) for d in (20, 21, 22)]
    days = [schedule.nightly_day(r.data_interval.start, r.data_interval.end) for r in runs]
    assert days == ["2026-11-19", "2026-11-20", "2026-11-21"]  # consecutive, each the day before it fires


@pytest.mark.parametrize("due, day, until", [
    (datetime(2026, 11, 21, 0, 15, tzinfo=UTC), "2026-11-21", "2026-11-21T00:15:00+00:00"),
    (datetime(2026, 11, 21, 13, 15, tzinfo=UTC), "2026-11-21", "2026-11-21T13:15:00+00:00"),
    (datetime(2026, 11, 21, 23, 15, tzinfo=UTC), "2026-11-21", "2026-11-21T23:15:00+00:00"),
])
def test_an_hourly_run_folds_its_day_up_to_the_end_of_its_interval(due, day, until):
    run = _scheduled_runs("hourly", due - timedelta(minutes=1), 1)[0]
    assert run.run_after == due
    start, end = run.data_interval
    assert schedule.hourly_day(start, end) == day and schedule.hourly_until(start, end) == until


def test_a_late_or_retried_run_processes_what_its_interval_says_not_the_clock():
    """Manual runs (``bundlecast run``) get the interval the scheduler would have given."""
    table = _core_timetable("nightly")
    for day in ("2026-01-01", "2026-03-29", "2026-12-31"):
        due = schedule.manual_run_after("nightly", day)
        inferred = table.infer_manual_data_interval(run_after=due)
        assert (inferred.start, inferred.end) == schedule.interval_before("nightly", due)
        assert schedule.nightly_day(inferred.start, inferred.end) == day
    hourly = _core_timetable("hourly")
    whole_day = hourly.infer_manual_data_interval(run_after=schedule.manual_run_after("hourly", "2026-11-20"))
    assert schedule.hourly_day(*whole_day) == "2026-11-20"
    assert schedule.hourly_until(*whole_day) == "2026-11-21T00:00:00+00:00"
    ten = hourly.infer_manual_data_interval(run_after=schedule.manual_run_after("hourly", "2026-11-20", hour=10))
    assert schedule.hourly_until(*ten) == "2026-11-20T11:00:00+00:00" and schedule.hourly_day(*ten) == "2026-11-20"
    with pytest.raises(ValueError):
        schedule.manual_run_after("hourly", "2026-11-20", hour=24)
