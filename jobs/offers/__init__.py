"""Step ``offers``: personalised offers: candidates, incentives, the global allocation, experiments.

    spark-submit jobs/submit.py offers --date 2026-11-20 [--mode nightly|reprice]
    bundlecast offers --date 2026-11-20 [--mode reprice]

Reads ``bundles``, ``need_bundles``, ``need_predictions``, ``demand_forecast``,
``user_value``, ``orders``, ``order_lines``, ``routes``, ``feedback``, ``offers``,
``items``, ``inventory``, ``inventory_reservations``, ``warehouses``, ``competitor_prices``,
``users``.
Writes ``offers``, ``experiment_exposures``, ``step_runs``.

Nightly:

1. **Candidates** per user (never users x bundles): the user's need bundle, and the
   complementary / value bundles anchored on the items the user is likely to need, at most
   ``offers.max_candidates_per_user``. Acceptance at the bundle price: the need bundle's
   confidence; a product bundle's acceptance times the user's need probability of its anchor.
2. **Experiment**: the active experiment (``experiments`` in configuration) assigns each
   candidate user a variant by hash (``models.experiments``); ``control`` gets no offer; a
   variant may force an offer-type policy and scale the incentive (``level``).
3. **Incentive** per candidate from ``models.incentives``: user value (``user_value``),
   consolidation with tomorrow's routes, over-stock and stock-out risk (``inventory``,
   ``demand_forecast``), carbon saved; capped by the maximum discount and minimum margin.
   Acceptance with the incentive uses the price response fitted on past offers and their
   redemptions (``feedback``), or the configured prior when there are too few.
4. **Allocation** (``models.pricing.allocate``, OR-Tools CP-SAT): at most
   ``max_offers_per_user`` per user, never more offers on an item than the user's warehouse
   has available, expected incentive cost within ``offers.budget``; maximising expected
   profit; the greedy allocation is the reported baseline.
5. Writes ``offers`` and ``experiment_exposures`` (the run date's rows) and the run summary.

Reprice (hourly): active offers of the latest nightly run are withdrawn when the warehouse
can no longer cover them or the user has since bought the items, and re-priced (or
withdrawn when the margin does not allow it) when a competitor price fell below ours.
"""
