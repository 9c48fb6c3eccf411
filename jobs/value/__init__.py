"""Step ``value``: predicted order days and spend per user over the next ``value.horizon_days``.

    bundlecast value --date 2026-11-20
    spark-submit jobs/submit.py value --date 2026-11-20

Reads ``events``, ``orders``, ``order_lines``, ``users``.
Writes ``user_value``.

Reads ``orders``, ``order_lines``, ``events``, ``users``; writes ``user_value`` (the run
date's rows) and its ``step_runs`` row; logs to MLflow (``bundlecast-user-value``).

Features are RFM and browsing as of a cut-off; targets are the order days and spend of the
horizon V after it. The model (gradient boosting with a Poisson loss, one per target) is
trained at dt - 2V (targets up to dt - V) and evaluated at dt - V (targets up to dt)
against the baseline "the last period repeats" on the same users; then refitted on the
dt - V window, registered, and gated on spend MAE (it must beat the baseline and the
champion). Scoring uses the champion.

Modules: ``extract`` (reads), ``transform`` (pure: features, metrics, the output rows),
``load`` (writes), ``job`` (wires them, MLflow and the gate).
"""
