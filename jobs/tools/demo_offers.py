"""Simulated customer responses to the demo world's offers, with planted A/B effects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bundlecast.jobs.tools.demo_spec import FORMATS, RawWriter

# Planted offer effects for the A/B test: chance an exposed user orders within the
# attribution window, per variant of the default experiment (control gets no offer).
PLANTED_CONVERSION = {"control": 0.10, "auto": 0.18, "generous": 0.28}


def simulate_offer_responses(raw_root: Path, exposures: pd.DataFrame, offers: pd.DataFrame,
                             items: pd.DataFrame, rates: dict[str, float] | None = None, seed: int = 7,
                             days: int = 3) -> list[str]:
    """Users' responses to a night's offers, with planted conversion rates per variant:
    each exposed user converts with ``rates[variant]`` within ``days`` after the exposure.
    A converting user with an offer buys its items at the offer price and redeems it
    (``feedback`` offer_redeem); one without (control) buys one item at list price.
    Written as raw orders, order lines and feedback, each landed on the day it happened (the
    contract refuses records dated after their landing day); returns those landing days."""
    rates = rates or PLANTED_CONVERSION
    rng = np.random.default_rng(seed)
    ex = exposures.sort_values("user_id").reset_index(drop=True)
    converts = rng.random(len(ex)) < ex.variant.map(rates).fillna(0).to_numpy()
    offer_of = offers.set_index("offer_id")
    price = items.assign(key=items.site_id + "|" + items.item_id).set_index("key").price
    orders, lines, feedback = [], [], []
    for k, r in enumerate(ex[converts].itertuples()):
        ts = pd.Timestamp(r.exposed_at) + pd.Timedelta(hours=int(rng.integers(2, days * 24 - 2)))
        oid, iso = f"OX{k:08d}", ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        has_offer = isinstance(r.offer_id, str) and r.offer_id in offer_of.index
        if has_offer:
            o = offer_of.loc[r.offer_id]
            keys, share = list(o["items"]), float(o.price) / float(o.list_price)
            feedback.append(dict(feedback_id=f"FX{k:08d}", feedback_ts=iso, user_id=r.user_id, kind="offer_redeem",
                                 reference_id=r.offer_id, postpone_days=None))
        else:
            keys, share = [price.index[int(rng.integers(0, len(price)))]], 1.0
        site = keys[0].split("|", 1)[0]
        orders.append(dict(order_id=oid, user_id=r.user_id, site_id=site, order_ts=iso, status="placed",
                           warehouse_id=None))
        for n, key in enumerate(keys, 1):
            s, i = key.split("|", 1)
            lines.append(dict(order_id=oid, line_no=n, site_id=s, item_id=i, quantity=1,
                              unit_price=round(float(price[key]) * share, 2), discount=0.0))
    day_of = {o["order_id"]: o["order_ts"][:10] for o in orders}
    landing = sorted(set(day_of.values()))
    for day in landing:
        out = RawWriter(Path(raw_root), day, FORMATS)
        for name, rows in (("orders", [o for o in orders if o["order_ts"][:10] == day]),
                           ("order_lines", [x for x in lines if day_of[x["order_id"]] == day]),
                           ("feedback", [f for f in feedback if f["feedback_ts"][:10] == day])):
            out.write(name, pd.DataFrame(rows))
    return landing
