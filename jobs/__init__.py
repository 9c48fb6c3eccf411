"""bundlecast Spark jobs: one module per pipeline step, plus the shared core (jobs.core)."""
