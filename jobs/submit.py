"""spark-submit entry point for every pipeline step (the file spark-submit is given).

    spark-submit jobs/submit.py STEP --date 2026-11-20 [--mode M] [--run-id ID] [step args]

STEP is one of ``bundlecast.jobs.pipeline.STEPS``; errors are printed as one line.
"""
import sys

from bundlecast.jobs.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
