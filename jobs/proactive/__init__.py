"""Step ``proactive``: proactive shipping: ship a user's need bundle before they order, as an extra stop on a
delivery route that already passes nearby.

    spark-submit jobs/submit.py proactive --date 2026-11-20 --mode nightly|hourly
    bundlecast proactive --date 2026-11-20 [--mode hourly]

Reads ``need_bundles``, ``need_predictions``, ``feedback``, ``routes``, ``items``,
``inventory``, ``inventory_reservations``, ``warehouses``, ``users``,
``proactive_shipments``, ``proactive_thresholds``, ``notifications``, ``route_stops``.
Writes ``proactive_shipments``, ``inventory_reservations``, ``route_stops``,
``route_plans``, ``notifications``, ``proactive_thresholds``, ``step_runs``.

Each run, in order:

1. **feedback** (``feedback``, ``reference_id`` = shipment id). The customer's
   shipment_cancel releases the reservation and takes the stop off the next plan,
   shipment_postpone moves the delivery day, shipment_accept confirms; after the delivery
   day they are too late (counted). Dispatch's proof of delivery: shipment_delivered fulfils
   the reservation, shipment_failed releases it. Past delivery days are closed: a routed
   shipment without proof after ``proof_grace_days`` counts as delivered; one never routed
   is dropped and its stock released.
2. **thresholds**: per category, the share of notified shipments cancelled over the
   lookback; above the rule's limit the category's confidence threshold is raised
   (``proactive_thresholds``).
3. **decision**: need bundles (nightly: the ``need_bundles`` table; hourly: rebuilt from the
   re-scored predictions) whose confidence passes their category's threshold, for opted-in
   users not in cool-down and without a proactive shipment in the window, delivered no
   later than the need date; highest confidence first, at most ``max_shipments`` per
   delivery day (whatever ran before counts, so a re-run adds nothing).
4. **reservation**: from the nearest warehouse whose stock (on hand - reserved - active
   reservations) covers every item and whose routes that day still have room
   (``max_stops_per_vehicle`` per van, ``route_room``), committed through the ledger's
   compare-and-set so concurrent runs never oversell (``inventory_reservations``).
5. **packaging**: boxes by bin packing (``models.packaging``).
6. **routes**: every active shipment of the delivery day inserted into that day's planned
   routes (``models.routing.insert``); planned stops keep vehicle, order and window;
   uneconomic or infeasible stops are dropped and their stock released
   (``route_stops``, ``route_plans``).
7. **notifications**: a heads-up with the expected arrival, the early-bird incentive (from
   ``models.incentives``, sized by the exact consolidation saving) and a cancel/postpone
   token (``notifications``).

Every decision is additive and keyed (shipment id = hash of user and delivery day): a
re-run finds its own shipments, reserves nothing twice and re-plans the day to the same
stops (the route search ends on a solution limit, not on the clock).
"""
