"""Step ``relationships``: item relationships across sites: co-view, co-purchase, complementary, alternative,
inventory correlation and a combined score with fitted weights.

    spark-submit jobs/submit.py relationships --date 2026-11-20 --mode full|incremental
    bundlecast related ITEM_ID [--site SITE] [--k 10] [--relation complementary]

Reads ``events``, ``orders``, ``order_lines``, ``items``, ``users``, ``reviews``,
``inventory``, ``item_relationships``, ``step_runs``, ``item_pair_counts``,
``item_unit_counts``, ``relationship_text_models``, ``relationship_weights``.
Writes ``item_pair_counts``, ``item_unit_counts``, ``relationship_text_models``,
``relationship_weights``, ``item_relationships``, ``step_runs``.

How it counts without an item x item matrix
    Behaviour is cut into *units*: (user, window bucket). A view unit is a session (or a
    day, or a week: ``relationships.co_view_window``), a purchase unit a week (orders and
    purchase events together, across sites). Within a unit every pair of distinct items
    co-occurs once. Units with more than ``max_items_per_unit`` items and user-days with
    more than ``max_events_per_user_day`` events are skipped and counted, which bounds the
    pairs per unit. Each unit weighs 2^((day - epoch)/half_life): the counts are additive,
    and the decay factor cancels in every rate, Jaccard and lift.

State and modes
    ``item_pair_counts`` and ``item_unit_counts`` hold the additive counts. ``full`` (nightly)
    rebuilds them from the lookback window; ``incremental`` (hourly) re-derives only the units
    that new events touched, subtracts their previous contribution and MERGEs the difference,
    then rescores the items it touched. Same data, same counts: a test checks it.

Scores
    complementary / alternative: behaviour (bought together vs viewed together with one
    bought, each discounted when co-occurrence is no more than chance) shrunk towards a text
    model (logistic regression on TF-IDF similarity, category affinity, price and brand) by
    the pair's evidence, so new items are scored from text alone. ``score`` is the fitted
    chance that item_b is bought soon after item_a, with weights fitted nightly per segment x
    category (``relationship_weights``) from later co-purchases on a strict time split.
"""
