"""A site's day is its own local day: the steps count orders and events by the site's time
zone (``sites.timezone``), not by the UTC date of the timestamp."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.fixture()
def two_zones(unit_tables):
    """A London site and a New York site; one order on each at 01:30 UTC on 21 November
    (20:30 the evening before in New York), and one at 23:30 UTC on 1 July (00:30 the next
    day in London, summer time)."""
    t = unit_tables

    def write(name, rows):
        getattr(t, t.mode(name))(name, t.frame(name, rows))

    write("sites", [
        {"site_id": "uk", "name": "UK", "country": "GB", "currency": "GBP", "timezone": "Europe/London"},
        {"site_id": "us", "name": "US", "country": "US", "currency": "USD", "timezone": "America/New_York"}])
    write("items", [{"site_id": s, "item_id": "i1", "title": "tea", "category": "c", "price": 2.0,
                                          "cost": 1.0} for s in ("uk", "us")])
    write("users", [{"user_id": "u1", "home_site_id": "uk", "region": "north"}])
    orders = [("o-uk", "uk", "2026-11-21T01:30:00"), ("o-us", "us", "2026-11-21T01:30:00"),
              ("o-summer", "uk", "2026-07-01T23:30:00")]
    write("orders", [{"order_id": o, "user_id": "u1", "site_id": s, "order_ts": _utc(ts), "status": "completed",
                      "dt": "2026-11-21"} for o, s, ts in orders])
    write("order_lines", [{"order_id": o, "line_no": 1, "site_id": s, "item_id": "i1", "quantity": 1,
                           "unit_price": 2.0, "dt": "2026-11-21"} for o, s, _ in orders])
    return t


def test_each_order_falls_on_its_site_local_day(two_zones):
    from bundlecast.jobs.core.commerce import with_local_day

    days = {r.order_id: r.day for r in with_local_day(two_zones, two_zones.read("orders"), "order_ts").collect()}
    assert days == {"o-uk": date(2026, 11, 21), "o-us": date(2026, 11, 20), "o-summer": date(2026, 7, 2)}


def test_the_need_and_forecast_steps_count_by_the_local_day(two_zones):
    from pyspark.sql import functions as F

    from bundlecast.jobs.forecast.extract import daily_demand
    from bundlecast.jobs.need.extract import history

    purchases, _ = history(two_zones)
    assert {(r.site_id, r.day) for r in purchases.collect()} == {
        ("uk", date(2026, 11, 21)), ("us", date(2026, 11, 20)), ("uk", date(2026, 7, 2))}
    demand, _ = daily_demand(two_zones, "2026-11-20", 200, ["site_id"])
    # the New York evening order is in the day that ends the window; London's is the next day
    assert {(r.site_id, r.ds) for r in demand.filter(F.col("ds") >= "2026-11-01").collect()} == {
        ("us", date(2026, 11, 20))}


def test_a_site_whose_time_zone_is_not_a_zone_is_refused_by_the_contract():
    from bundlecast.jobs.core import catalog

    zone = next(c for c in catalog.dataset("sites").columns if c.name == "timezone")
    assert "America/New_York" in zone.allowed and "Europe/London" in zone.allowed
    assert "Mars/Olympus_Mons" not in zone.allowed and zone.allowed_label == "iana_time_zones"
