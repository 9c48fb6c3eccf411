"""Step ``export``: exports for downstream systems: a snapshot of a table under ``<table>/dt=<date>/``.

    bundlecast export TABLE --date YYYY-MM-DD [--target s3://bucket/prefix] [--format parquet|jsonl]

Data files first, then ``_manifest.json`` (table, Delta version, row count, schema, every
file with its sha256, and a checksum over them) written last: a consumer that waits for
the manifest never sees a partial export. Re-exporting a date first removes the old
manifest, then replaces the files, so the result is the same whatever ran before.
Targets: ``file://`` (default, under BUNDLECAST_HOME/exports) or ``s3://`` via boto3 with a
configurable endpoint (AWS, MinIO, moto).
"""
