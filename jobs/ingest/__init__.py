"""Step ``ingest``: ingestion: raw landing zone -> validated silver Delta tables, quarantine and audit.

    spark-submit jobs/submit.py ingest --date 2026-11-20 [--datasets events,orders] [--run-id ID]

Reads the raw zone (``raw/<dataset>/dt=<date>/``).
Writes ``sites``, ``warehouses``, ``items``, ``users``, ``events``, ``orders``,
``order_lines``, ``reviews``, ``inventory``, ``weather``, ``calendar_events``, ``routes``,
``competitor_prices``, ``feedback``, ``quarantine``, ``quarantine_files``,
``ingestion_audit``.

Reads ``raw/<dataset>/dt=<date>/`` (JSON lines, CSV or Parquet), enforces the contract
(conf/base/contract.yaml) row by row, runs the dataset's Great Expectations suite, drops
natural-key duplicates, and writes:
  * the silver table of the dataset (upsert on keys, or overwrite of the dt partition);
  * ``quarantine``: every rejected row with its raw content and every reason;
  * ``quarantine_files``: files that could not be read at all;
  * ``ingestion_audit``: rows read = accepted + quarantined + duplicates dropped.
Every write is keyed on the landing date, so re-running a date leaves the same rows.
A dataset whose quarantined share passes ``ingestion.quarantine_threshold`` is not
published, and the run fails naming the dataset, the count and the top reasons.
"""
