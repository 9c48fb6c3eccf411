"""Step ``bundles``: bundles: need bundles per user and product bundles (complementary, alternative, value),
priced for expected margin.

    spark-submit jobs/submit.py bundles --date 2026-11-20
    bundlecast bundles --date 2026-11-20
    bundlecast bundle USER ITEM [--site S]      (the best bundle for one user looking at one item)

Reads ``need_predictions``, ``item_relationships``, ``orders``, ``order_lines``, ``items``,
``inventory``, ``inventory_reservations``, ``warehouses``, ``competitor_prices``, ``users``.
Writes ``need_bundles``, ``bundles``, ``step_runs``.

* ``need_bundles``: per user, the items of ``need_predictions`` with probability >=
  ``bundles.need.min_probability`` (at most ``max_items``), the main items (probability >=
  ``main_share`` x the top one), confidence = the chance the user needs all main items,
  the earliest need date, and whether the user's region warehouse covers every item.
* ``bundles``: per anchor item, from ``item_relationships``: complementary (anchor + its
  best complementary neighbours), alternative (anchor + its best alternatives: a choice at
  other price points), value (anchor + its best non-alternative neighbours at a bundle
  price). Acceptance at list price comes from the data (the anchor's co-purchase rates;
  for alternatives the share of co-viewed units that ended in a purchase); the price is the
  point of a grid that maximises expected margin under the minimum margin and the maximum
  discount, penalised above the competitor reference (``models.pricing``).

Bad input never makes a wrong bundle: items without a price or cost, or whose cost is not
below the price, are left out and counted; competitor prices <= 0 are ignored and counted;
bundles with no price that keeps the minimum margin are not written and counted. The counts
go to ``step_runs`` (step ``bundles``).
"""
