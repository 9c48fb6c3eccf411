"""Step ``need``: need prediction: for each user and candidate item, the probability that the user buys it
within the next H days (``need.horizon_days``, 3-7) and when.

    spark-submit jobs/submit.py need --date 2026-11-20 --mode train|score|rescore
    bundlecast need --date 2026-11-20 [--mode train|score|rescore]

Reads ``events``, ``orders``, ``order_lines``, ``items``, ``users``, ``weather``,
``item_relationships``, ``demand_forecast``, ``need_predictions``, ``step_runs``.
Writes ``need_predictions``, ``step_runs``.

Candidates (users x items is never enumerated): the user's own purchases, ALS
collaborative filtering on implicit feedback, items co-bought with what the user bought
recently (plus, when scoring, the top of ``item_relationships``), and what the user's
segment buys. Features are computed in Spark from data up to the cut-off only; labels are
the purchases of the H days after it.

``train`` (nightly): examples at ``need.train_cutoffs`` cut-offs, each at least H days
before the evaluation cut-off (dt - H) so no training label overlaps the evaluation window;
the model is evaluated there against personal top-frequency and segment popularity,
logged to MLflow, registered as ``challenger`` and promoted to ``champion`` only if it
beats the champion on the same evaluation frame (``models/registry.py``). Then it scores.
``rescore`` (hourly): the champion rescores the users with events or orders since the last
run's watermark (``step_runs``).
"""
