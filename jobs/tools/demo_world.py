"""Demo world generator: a consistent multi-site world written in the raw contract.

    bundlecast generate --scale tiny|small|medium|large --seed N [--date YYYY-MM-DD]

Writes every contract dataset under ``raw/<dataset>/dt=<date>/`` (an initial load of the
history, landed on the demo date) and the structure it planted to
``demo/ground_truth.json`` so tests can check that later steps recover it:
replenishment cycles, cross-site complementary pairs, substitutes (viewed together, one
bought), weekly and yearly seasonality, weather-sensitive items, holidays, stock-outs,
users who opt out of proactive delivery and existing delivery routes with time windows.

Events are generated day by day and written in chunks, so ``large`` never sits in memory.
Pure numpy/pyarrow: no Spark needed.
"""
from __future__ import annotations

import json
import math
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from bundlecast.jobs.tools.demo_spec import (
    CATEGORIES,
    FORMATS,
    REGION_CENTRES,
    REGIONS,
    SCALES,
    SEGMENTS,
    SITES,
    RawWriter,
    _iso,
)


def generate(raw_root: Path, truth_path: Path, scale: str = "tiny", seed: int = 42,
             landing_date: str = "2026-11-20", formats: dict[str, str] | None = None,
             progress=lambda msg: None) -> dict:
    """Generate the world; returns per-dataset row counts. Deterministic for (scale, seed, date):
    the stages below draw from one random generator in a fixed order."""
    sc = SCALES[scale]
    rng = np.random.default_rng(seed)
    formats = dict(FORMATS, **(formats or {}))
    if scale in ("medium", "large"):
        formats["events"] = "parquet"
    end = date.fromisoformat(landing_date)
    start = end - timedelta(days=sc.days)
    w = SimpleNamespace(sc=sc, rng=rng, out=RawWriter(Path(raw_root), landing_date, formats), end=end, start=start,
                        days=[start + timedelta(days=i) for i in range(sc.days)], progress=progress)
    for stage in (_places, _catalog, _people, _calendar_and_weather, _stockouts, _behaviour, _reviews_and_stock,
                  _routes_and_feedback):
        stage(w)
    truth = _truth(w, scale, seed, landing_date)
    Path(truth_path).parent.mkdir(parents=True, exist_ok=True)
    Path(truth_path).write_text(json.dumps(truth, indent=1))
    return w.out.rows


def _places(w: SimpleNamespace) -> None:
    """Sites and one warehouse per region."""
    out = w.out
    # --- sites, warehouses -------------------------------------------------------------
    out.write("sites", pd.DataFrame(SITES, columns=["site_id", "name", "country", "currency", "timezone"]))
    wh = [(f"wh-{r}", SITES[i % 3][0], r, *REGION_CENTRES[r]) for i, r in enumerate(REGIONS)]
    warehouses = pd.DataFrame(wh, columns=["warehouse_id", "site_id", "region", "lat", "lon"])
    out.write("warehouses", warehouses)
    w.warehouses = warehouses


def _catalog(w: SimpleNamespace) -> None:
    """Items per site, and the planted structure: complements, substitutes, weather, popularity."""
    rng, out, sc, progress = w.rng, w.out, w.sc, w.progress
    # --- items -------------------------------------------------------------------------
    rows = []
    for site_id, *_ in SITES:
        cats = CATEGORIES[site_id]
        for j in range(sc.items_per_site):
            cat = cats[j % len(cats)]
            price = float(np.round(rng.lognormal(1.8, 0.6), 2))
            perishable = cat in ("grocery/dairy", "grocery/frozen")
            rows.append(dict(
                site_id=site_id, item_id=f"{site_id[:3].upper()}{j:06d}",
                title=f"{cat.split('/')[1].title()} item {j}", description=f"A {cat.split('/')[1]} product, model {j % 7}",
                category=cat, brand=f"brand{j % 11}", price=price, cost=round(price * rng.uniform(0.4, 0.75), 2),
                volume_l=round(float(rng.uniform(0.1, 5)), 2), weight_kg=round(float(rng.uniform(0.05, 4)), 3),
                perishable=perishable, shelf_life_days=int(rng.integers(5, 30)) if perishable else None,
                attributes=json.dumps({"tier": ["budget", "standard", "premium"][j % 3]})))
    items = pd.DataFrame(rows)
    n_items = len(items)
    item_key = (items.site_id + "|" + items.item_id).to_numpy()
    by_site = {s: np.flatnonzero(items.site_id.to_numpy() == s) for s, *_ in SITES}

    # Planted item structure.
    n_pairs = max(3, n_items // 20)
    comp_a = rng.choice(by_site["home"], n_pairs, replace=False)
    comp_b = rng.choice(np.concatenate([by_site["grocery"], by_site["pharmacy"]]), n_pairs, replace=False)
    complement = dict(zip(comp_a.tolist(), comp_b.tolist()))
    sub_groups = [rng.choice(by_site["grocery"], 3, replace=False) for _ in range(max(2, n_items // 40))]
    substitute_of = {int(i): g for g in sub_groups for i in g}
    rain_items = np.flatnonzero(items.category.isin(["home/rain", "pharmacy/cold"]).to_numpy())
    sun_items = np.flatnonzero(items.category.isin(["grocery/drinks", "grocery/frozen", "pharmacy/sun"]).to_numpy())
    item_weather = np.zeros(n_items)  # +1: sells with heat, -1: sells with rain
    item_weather[sun_items], item_weather[rain_items] = 1.0, -1.0
    popularity = rng.pareto(1.2, n_items) + 1
    popularity /= popularity.sum()
    out.write("items", items)
    progress(f"items: {n_items}")
    vars(w).update(items=items, n_items=n_items, item_key=item_key, complement=complement, sub_groups=sub_groups,
                   substitute_of=substitute_of, rain_items=rain_items, sun_items=sun_items, item_weather=item_weather,
                   popularity=popularity)


def _people(w: SimpleNamespace) -> None:
    """Users, and each user's replenished staples."""
    rng, out, sc, progress, items, start = w.rng, w.out, w.sc, w.progress, w.items, w.start
    # --- users -------------------------------------------------------------------------
    n_users = sc.users
    region = rng.choice(REGIONS, n_users)
    centre = np.array([REGION_CENTRES[r] for r in region])
    opt_in = rng.random(n_users) > 0.2
    window_start = rng.choice([8, 10, 12, 14, 16, 18], n_users)
    users = pd.DataFrame(dict(
        user_id=[f"U{i:07d}" for i in range(n_users)], home_site_id=rng.choice([s[0] for s in SITES], n_users),
        age=rng.integers(18, 85, n_users), gender=rng.choice(["f", "m", "x", "unknown"], n_users, p=[.48, .47, .03, .02]),
        segment=rng.choice(SEGMENTS, n_users, p=[.35, .3, .2, .15]), region=region,
        lat=np.round(centre[:, 0] + rng.normal(0, 0.05, n_users), 5), lon=np.round(centre[:, 1] + rng.normal(0, 0.05, n_users), 5),
        proactive_opt_in=opt_in, delivery_window_start=window_start, delivery_window_end=window_start + 2,
        signup_date=[str(start - timedelta(days=int(d))) for d in rng.integers(0, 700, n_users)]))
    for lo in range(0, n_users, 200_000):
        out.write("users", users.iloc[lo:lo + 200_000])
    user_ids = users.user_id.to_numpy()
    progress(f"users: {n_users}")

    # Replenishment: each user rebuys 1-3 staple items every k days.
    staples_per_user = rng.integers(1, 4, n_users)
    st_user = np.repeat(np.arange(n_users), staples_per_user)
    staple_pool = np.flatnonzero(items.category.isin(["grocery/coffee", "grocery/dairy", "pharmacy/baby",
                                                       "pharmacy/vitamins", "home/cleaning"]).to_numpy())
    st_item = rng.choice(staple_pool, len(st_user))
    st_cycle = rng.choice([7, 14, 21, 30], len(st_user))
    st_phase = rng.integers(0, 30, len(st_user))
    vars(w).update(n_users=n_users, region=region, opt_in=opt_in, users=users, user_ids=user_ids, st_user=st_user, st_item=st_item,
                   st_cycle=st_cycle, st_phase=st_phase)


def _calendar_and_weather(w: SimpleNamespace) -> None:
    """Holidays and events; observed and forecast weather per region."""
    rng, out, sc, end, days = w.rng, w.out, w.sc, w.end, w.days
    # --- calendar, weather ---------------------------------------------------------------
    holidays = {end - timedelta(days=d): name for d, name in [(3, "Network sale day"), (25, "Bank holiday")] if d < sc.days}
    calendar = [(str(d), "ALL", n, "holiday" if "holiday" in n.lower() else "promotion") for d, n in holidays.items()]
    calendar += [(str(end + timedelta(days=5)), "north", "City marathon", "local_event")]
    out.write("calendar_events", pd.DataFrame(calendar, columns=["date", "region", "event_name", "event_type"]))
    weather_rows, temp = [], {}
    for d in days + [end + timedelta(days=i) for i in range(14)]:
        doy = d.timetuple().tm_yday
        for r in REGIONS:
            t = 11 + 8 * math.sin(2 * math.pi * (doy - 110) / 365) + rng.normal(0, 2.5)
            p = max(0.0, rng.gamma(0.6, 4) - 1)
            temp[(d, r)] = (t, p)
            weather_rows.append((str(d), r, round(t, 1), round(p, 1), d >= end))
    out.write("weather", pd.DataFrame(weather_rows, columns=["date", "region", "temperature_c", "precipitation_mm", "is_forecast"]))
    vars(w).update(holidays=holidays, temp=temp)


def _stockouts(w: SimpleNamespace) -> None:
    """A few items out of stock for a few days each."""
    rng, sc, n_items = w.rng, w.sc, w.n_items
    # Stock-outs: a few items are out of stock for a few days each.
    stockouts = {}
    for i in rng.choice(n_items, max(2, n_items // 25), replace=False):
        d0 = int(rng.integers(0, sc.days - 4))
        stockouts[int(i)] = (d0, d0 + int(rng.integers(2, 5)))
    stock_mask = np.zeros((sc.days, n_items), dtype=bool)
    for i, (a, b) in stockouts.items():
        stock_mask[a:b, i] = True
    vars(w).update(stockouts=stockouts, stock_mask=stock_mask)


def _behaviour(w: SimpleNamespace) -> None:
    """Views, carts, purchases and orders, day by day, written in chunks."""
    out, sc, progress, days = w.out, w.sc, w.progress, w.days
    counters = dict(event=0, order=0)
    chunk: dict[str, list] = {"events": [], "orders": [], "order_lines": []}

    def flush():
        for name in chunk:
            if chunk[name]:
                out.write(name, pd.concat(chunk[name], ignore_index=True))
                chunk[name] = []

    for day_idx, d in enumerate(days):
        baskets = _day_baskets(w, day_idx, d)
        _day_records(w, day_idx, d, baskets, counters, chunk)
        if (day_idx + 1) % sc.chunk_days == 0:
            flush()
            progress(f"behaviour: {day_idx + 1}/{sc.days} days, {counters['event']:,} events")
    flush()


def _day_baskets(w: SimpleNamespace, day_idx: int, d) -> tuple:
    """One day's views and purchases (user, item index arrays): seasonal, weekly and holiday
    activity, substitutes viewed together, weather-driven buying, complements bought
    together, staples coming due, and nothing bought while out of stock."""
    (rng, sc, n_users, n_items, popularity, substitute_of, temp, item_weather, complement, st_phase, st_cycle, st_user,
     st_item, stock_mask, holidays) = (w.rng, w.sc, w.n_users, w.n_items, w.popularity, w.substitute_of, w.temp,
                                       w.item_weather, w.complement, w.st_phase, w.st_cycle, w.st_user, w.st_item,
                                       w.stock_mask, w.holidays)
    region_of_user, base_active = w.region, sc.active_share
    dow = d.weekday()
    season = 1 + 0.15 * math.sin(2 * math.pi * (d.timetuple().tm_yday - 330) / 365)
    weekly = [0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.2][dow]
    holiday = 1.5 if d in holidays else 1.0
    active = np.flatnonzero(rng.random(n_users) < base_active * season * weekly * holiday)
    n_views = rng.poisson(sc.views_per_active_user, len(active)) + 1
    v_user = np.repeat(active, n_views)
    v_item = rng.choice(n_items, len(v_user), p=popularity)
    # Substitutes: a viewed group member brings the other members into the same session.
    extra_u, extra_i = [], []
    for idx in np.flatnonzero(np.isin(v_item, list(substitute_of))):
        group = substitute_of[int(v_item[idx])]
        extra_u.extend([v_user[idx]] * len(group))
        extra_i.extend(group.tolist())
    v_user = np.concatenate([v_user, np.array(extra_u, dtype=v_user.dtype)])
    v_item = np.concatenate([v_item, np.array(extra_i, dtype=v_item.dtype)])
    # Purchase probability: base, weather, stock.
    t_p = np.array([temp[(d, r)] for r in region_of_user[v_user]]) if len(v_user) else np.zeros((0, 2))
    w = item_weather[v_item]
    weather_mult = np.where(w > 0, np.clip(1 + (t_p[:, 0] - 12) / 10, 0.3, 2.5), 1.0) if len(v_user) else w
    weather_mult = np.where(w < 0, np.clip(0.5 + t_p[:, 1] / 4, 0.5, 3.0), weather_mult) if len(v_user) else w
    buy = rng.random(len(v_user)) < 0.08 * weather_mult
    # A substitute group ends in at most one purchase: the others stay views.
    is_sub = np.isin(v_item, list(substitute_of))
    buy &= ~is_sub | (rng.random(len(v_user)) < 0.34)
    p_user, p_item = v_user[buy], v_item[buy]
    # Complements: buying A brings its cross-site partner B into the basket.
    has_comp = np.isin(p_item, list(complement))
    take = has_comp & (rng.random(len(p_item)) < 0.7)
    comp_user, comp_item = p_user[take], np.array([complement[int(i)] for i in p_item[take]], dtype=p_item.dtype)
    # Replenishment: staples come due every cycle (+-1 day).
    due = ((day_idx + st_phase) % st_cycle == 0) & (rng.random(len(st_user)) < 0.9)
    jitter = rng.random(len(st_user)) < 0.1
    due = due | (((day_idx + 1 + st_phase) % st_cycle == 0) & jitter)
    r_user, r_item = st_user[due], st_item[due]
    b_user = np.concatenate([p_user, comp_user, r_user])
    b_item = np.concatenate([p_item, comp_item, r_item])
    in_stock = ~stock_mask[day_idx, b_item]
    b_user, b_item = b_user[in_stock], b_item[in_stock]
    return v_user, v_item, r_user, r_item, comp_user, comp_item, b_user, b_item


def _day_records(w: SimpleNamespace, day_idx: int, d, baskets: tuple, counters: dict, chunk: dict) -> None:
    """The day's events (a view and a cart before each purchase, one session per user and
    site) and its orders and order lines, appended to ``chunk``."""
    rng, sc, n_users, items, user_ids, region_of_user = w.rng, w.sc, w.n_users, w.items, w.user_ids, w.region
    v_user, v_item, r_user, r_item, comp_user, comp_item, b_user, b_item = baskets
    # Purchases are preceded by a view and an add-to-cart.
    all_user = np.concatenate([v_user, r_user, comp_user, b_user, b_user])
    all_item = np.concatenate([v_item, r_item, comp_item, b_item, b_item])
    all_type = np.concatenate([np.full(len(v_user) + len(r_user) + len(comp_user), "view"),
                               np.full(len(b_user), "add_to_cart"), np.full(len(b_user), "purchase")])
    n_ev = len(all_user)
    # Events of a user on a day share one session; seconds within the day, ordered by type.
    start_sec = rng.integers(6 * 3600, 22 * 3600, n_users)
    order_in_type = {"view": 0, "add_to_cart": 1, "purchase": 2}
    offset = np.vectorize(order_in_type.get)(all_type) * 120 + rng.integers(0, 100, n_ev)
    ts = np.datetime64(d) + (start_sec[all_user] + offset).astype("timedelta64[s]")
    site_of = items.site_id.to_numpy()[all_item]
    events = pd.DataFrame(dict(
        event_id=[f"E{counters['event'] + k:010d}" for k in range(n_ev)], event_ts=_iso(ts),
        user_id=user_ids[all_user], site_id=site_of, item_id=items.item_id.to_numpy()[all_item],
        event_type=all_type, session_id=np.char.add(np.char.add(user_ids[all_user], f"-{d:%Y%m%d}-"), site_of)))
    counters["event"] += n_ev
    chunk["events"].append(events)
    # Orders: one per (user, site) of the day's purchases.
    if len(b_user):
        basket = pd.DataFrame(dict(u=b_user, i=b_item, site=items.site_id.to_numpy()[b_item]))
        basket = basket.drop_duplicates(["u", "i"])
        keys = basket.groupby(["u", "site"], sort=True).ngroup().to_numpy()
        order_ids = np.array([f"O{counters['order'] + k:09d}" for k in range(keys.max() + 1)])
        counters["order"] += len(order_ids)
        basket["order_id"] = order_ids[keys]
        basket["line_no"] = basket.groupby("order_id").cumcount() + 1
        head = basket.drop_duplicates("order_id")
        cancelled = rng.random(len(head)) < 0.03
        order_ts = np.datetime64(d) + (start_sec[head.u.to_numpy()] + 400).astype("timedelta64[s]")
        chunk["orders"].append(pd.DataFrame(dict(
            order_id=head.order_id.to_numpy(), user_id=user_ids[head.u.to_numpy()], site_id=head.site.to_numpy(),
            order_ts=_iso(order_ts), status=np.where(cancelled, "cancelled", np.where(day_idx < sc.days - 2, "delivered", "placed")),
            warehouse_id=np.array([f"wh-{r}" for r in region_of_user[head.u.to_numpy()]]))))
        chunk["order_lines"].append(pd.DataFrame(dict(
            order_id=basket.order_id.to_numpy(), line_no=basket.line_no.to_numpy(), site_id=basket.site.to_numpy(),
            item_id=items.item_id.to_numpy()[basket.i.to_numpy()], quantity=rng.integers(1, 4, len(basket)),
            unit_price=items.price.to_numpy()[basket.i.to_numpy()],
            discount=np.where(rng.random(len(basket)) < 0.1, 0.1, 0.0))))


def _reviews_and_stock(w: SimpleNamespace) -> None:
    """Reviews, the last week's inventory snapshots, competitor prices."""
    (rng, out, sc, n_users, n_items, popularity, user_ids, items, end, days, warehouses, stock_mask) = (
        w.rng, w.out, w.sc, w.n_users, w.n_items, w.popularity, w.user_ids, w.items, w.end, w.days, w.warehouses,
        w.stock_mask)
    # --- reviews, inventory, competitor prices, routes, feedback ---------------------------
    n_rev = max(10, n_users // 10)
    rev_item = rng.choice(n_items, n_rev, p=popularity)
    out.write("reviews", pd.DataFrame(dict(
        review_id=[f"R{i:08d}" for i in range(n_rev)], user_id=user_ids[rng.integers(0, n_users, n_rev)],
        site_id=items.site_id.to_numpy()[rev_item], item_id=items.item_id.to_numpy()[rev_item],
        rating=rng.choice([1, 2, 3, 4, 5], n_rev, p=[.05, .07, .15, .33, .4]),
        review_text=rng.choice(["great value", "works as expected", "too small", "would buy again", "broke quickly"], n_rev),
        review_ts=_iso(np.datetime64(end) - rng.integers(3600, sc.days * 86400, n_rev).astype("timedelta64[s]")))))
    snap_days = days[-7:]
    inv = []
    for k, d in enumerate(snap_days):
        day_idx = sc.days - len(snap_days) + k
        for wid in warehouses.warehouse_id:
            on_hand = rng.integers(5, 200, n_items)
            on_hand[stock_mask[day_idx]] = 0
            inv.append(pd.DataFrame(dict(
                snapshot_ts=f"{d}T23:00:00Z", warehouse_id=wid, site_id=items.site_id, item_id=items.item_id,
                on_hand=on_hand, reserved=(on_hand * rng.uniform(0, 0.2, n_items)).astype(int),
                incoming=rng.integers(0, 50, n_items))))
    out.write("inventory", pd.concat(inv, ignore_index=True))
    comp_items = rng.choice(n_items, max(5, n_items // 5), replace=False)
    out.write("competitor_prices", pd.DataFrame(dict(
        observed_ts=f"{days[-1]}T06:00:00Z", site_id=items.site_id.to_numpy()[comp_items],
        item_id=items.item_id.to_numpy()[comp_items], competitor="rival-shop",
        price=np.round(items.price.to_numpy()[comp_items] * rng.uniform(0.85, 1.15, len(comp_items)), 2))))


def _routes_and_feedback(w: SimpleNamespace) -> None:
    """Planned delivery routes for the next three days; customer feedback."""
    rng, out, sc, n_users, user_ids, end, warehouses = w.rng, w.out, w.sc, w.n_users, w.user_ids, w.end, w.warehouses
    route_rows = []
    for k in range(3):  # routes for the next three days
        rd = end + timedelta(days=k)
        for w_i, wrow in warehouses.iterrows():
            for v in range(max(2, sc.users // 5000)):  # vans per depot grow with the world
                rid = f"RT-{rd:%Y%m%d}-{wrow.warehouse_id}-{v}"
                n_stops = int(rng.integers(6, 12))
                for s in range(n_stops):
                    lat = wrow.lat + rng.normal(0, 0.04)
                    lon = wrow.lon + rng.normal(0, 0.04)
                    w0 = 8 + (s * 10) // n_stops
                    route_rows.append((rid, str(rd), f"van-{w_i}-{v}", wrow.warehouse_id, 800.0,
                                       f"{rd}T07:00:00Z", f"{rd}T19:00:00Z", s + 1, round(lat, 5), round(lon, 5),
                                       f"{rd}T{w0:02d}:00:00Z", f"{rd}T{w0 + 2:02d}:00:00Z",
                                       round(float(rng.uniform(1, 30)), 1), None))
    out.write("routes", pd.DataFrame(route_rows, columns=[
        "route_id", "route_date", "vehicle_id", "depot_id", "capacity_kg", "shift_start", "shift_end", "stop_seq",
        "lat", "lon", "window_start", "window_end", "load_kg", "order_id"]))
    n_fb = max(10, n_users // 20)
    fb_kind = rng.choice(["shipment_accept", "shipment_cancel", "shipment_postpone", "offer_redeem", "offer_dismiss"], n_fb)
    out.write("feedback", pd.DataFrame(dict(
        feedback_id=[f"F{i:08d}" for i in range(n_fb)],
        feedback_ts=_iso(np.datetime64(end) - rng.integers(3600, 30 * 86400, n_fb).astype("timedelta64[s]")),
        user_id=user_ids[rng.integers(0, n_users, n_fb)], kind=fb_kind, reference_id=[f"SH{i:07d}" for i in range(n_fb)],
        postpone_days=np.where(fb_kind == "shipment_postpone", rng.integers(1, 8, n_fb), None))))


def _truth(w: SimpleNamespace, scale: str, seed: int, landing_date: str) -> dict:
    """What the generator planted, for the tests that check the pipeline finds it."""
    (out, start, item_key, complement, sub_groups, user_ids, st_user, st_item, st_cycle, sun_items, rain_items, holidays,
     stockouts, days, opt_in) = (w.out, w.start, w.item_key, w.complement, w.sub_groups, w.user_ids, w.st_user, w.st_item,
                                 w.st_cycle, w.sun_items, w.rain_items, w.holidays, w.stockouts, w.days, w.opt_in)
    truth = dict(
        scale=scale, seed=seed, landing_date=landing_date, history_start=str(start), rows=out.rows,
        complementary_pairs=[[item_key[a], item_key[b]] for a, b in complement.items()],
        substitute_groups=[[item_key[i] for i in g] for g in sub_groups],
        replenishment=[dict(user_id=user_ids[u], item=item_key[i], cycle_days=int(c))
                       for u, i, c in zip(st_user[:2000], st_item[:2000], st_cycle[:2000])],
        weather_sensitive=dict(heat=[item_key[i] for i in sun_items], rain=[item_key[i] for i in rain_items]),
        holidays={str(d): n for d, n in holidays.items()},
        stockouts=[dict(item=item_key[i], start=str(days[a]), end=str(days[b - 1])) for i, (a, b) in stockouts.items()],
        opted_out_users=int((~opt_in).sum()),
        weekly_multipliers=[0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.2])
    return truth
