"""Which data a scheduled run processes, from its data interval and never from the clock.

Both DAGs use Airflow's ``CronTriggerTimetable`` with an explicit interval, so a run's
``data_interval_end`` is the moment it was due and ``data_interval_start`` one period before.
Airflow's ``ds`` is the *logical date*, which for a trigger timetable is the moment the run
fires: the nightly due at 02:00 on D + 1 would get ``ds`` = D + 1, a day with two hours of
data. Here:

- **nightly** (due daily at 02:00, interval one day): the landing day it processes is the
  day its interval starts on. Due at 02:00 on D + 1, interval [D 02:00, D + 1 02:00): day D,
  the previous full day; the two hours are the grace for late files of D.
- **hourly** (due at :15, interval one hour): it folds in day ``day`` up to ``until``, the
  end of its interval. The day is the one the interval's last instant falls on, so the
  run due at 00:15 folds the first quarter hour of the new day, and a run whose interval
  ends at midnight (``bundlecast run hourly --date D``) folds all of D.

A retried, late or backfilled run has the same interval, so it processes the same rows.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

NIGHTLY_CRON, NIGHTLY_INTERVAL = "0 2 * * *", timedelta(days=1)
HOURLY_CRON, HOURLY_INTERVAL = "15 * * * *", timedelta(hours=1)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def nightly_day(start: datetime, end: datetime) -> str:
    """The landing day (ISO) a nightly run with data interval [start, end) processes."""
    return _utc(start).date().isoformat()


def hourly_day(start: datetime, end: datetime) -> str:
    """The landing day (ISO) an hourly run with data interval [start, end) folds in."""
    return (_utc(end) - timedelta(microseconds=1)).date().isoformat()


def hourly_until(start: datetime, end: datetime) -> str:
    """The exclusive upper bound (ISO, UTC) of the event times an hourly run folds in."""
    return _utc(end).isoformat(timespec="seconds")


RUN_DAY = {"nightly": nightly_day, "hourly": hourly_day}


def run_day(kind: str, start: datetime, end: datetime) -> str:
    """The landing day a ``kind`` run with data interval [start, end) processes."""
    return RUN_DAY[kind](start, end)


def manual_run_after(kind: str, day: str, hour: int | None = None) -> datetime:
    """When a run of ``kind`` for ``day`` is due (UTC): what ``bundlecast run`` hands Airflow
    so that the timetable infers the interval that processes ``day``. nightly: 02:00 on the
    next day; hourly: the end of ``hour`` (default: the whole day, i.e. next midnight)."""
    d = date.fromisoformat(day)
    if kind == "nightly":
        return datetime.combine(d + timedelta(days=1), time(2, 0), timezone.utc)
    if hour is None:
        return datetime.combine(d + timedelta(days=1), time(0, 0), timezone.utc)
    if not 0 <= hour <= 23:
        raise ValueError(f"hour {hour} is not between 0 and 23")
    return datetime.combine(d, time(hour, 0), timezone.utc) + timedelta(hours=1)


def interval_before(kind: str, run_after: datetime) -> tuple[datetime, datetime]:
    """The data interval Airflow infers for a run of ``kind`` due at ``run_after``
    (``CronTriggerTimetable.infer_manual_data_interval``: one interval ending then)."""
    end = _utc(run_after)
    return end - (NIGHTLY_INTERVAL if kind == "nightly" else HOURLY_INTERVAL), end
