"""Step ``experiments``: experiment analysis: conversion, revenue and margin per user per variant.

    spark-submit jobs/submit.py experiments --date 2026-11-27
    bundlecast experiments report [--date D] [--experiment NAME]

Reads ``experiment_exposures``, ``offers``, ``orders``, ``order_lines``, ``items``,
``feedback``.
Writes ``experiment_results``.

For each configured experiment, every user exposed (``experiment_exposures``, control
included) whose attribution window (first exposure + ``attribution_days``) has ended by the
run date counts once, in the variant of the first exposure. Outcomes in the window: any
non-cancelled order (conversion), its revenue after discounts, and its margin (revenue -
item cost - the cash cost of redeemed offer incentives, from ``feedback`` offer_redeem).
Per variant and metric: the estimate with a 95% interval (Wilson for conversion), the
difference to control with a Welch interval and p-value, the sample-ratio-mismatch check,
and the winner per metric. Writes ``experiment_results`` (the run date's rows).
"""
