# bundlecast: `make run` (set-up + demo world + nightly and hourly DAGs) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export BUNDLECAST_HOME ?= $(CURDIR)/var
export BUNDLECAST_ENV ?= local
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1
DEMO_DATE ?= 2026-11-20
DEMO_SCALE ?= demo
PYTEST_ARGS ?=
# make test: two pytest-xdist workers taking whole modules (tests/conftest.py orders them);
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
# Real data for the relationship evaluation (see ../shared/data/README.md), in its own world.
RETAIL_DATA ?= $(CURDIR)/../shared/data/online_retail
EVAL_HOME ?= $(BUNDLECAST_HOME)/eval-online-retail
EVAL_CUTOFF ?= 2011-09-01

.PHONY: install setup run test test-fast lint bench eval-relationships eval-need replay-retail replay-demo lock clean help stack stack-down

help:
	@echo "make run    - install, fetch jars once, generate the demo world, run nightly then hourly DAGs"
	@echo "make test   - install, lint, then the whole test suite"
	@echo "make test-fast - lint and the unit tests (transforms on explicit rows; no world, no Airflow)"
	@echo "make bench  - ingestion, relationship, model, offer and routing (Solomon + insertion) benchmarks on the medium world (BENCH_SCALE=small for a quick one), then the whole nightly + hourly on small and medium (BENCH_PIPELINE_SCALES)"
	@echo "make eval-relationships - hit rate/NDCG@10 on UCI Online Retail vs lift and FPGrowth (MLflow)"
	@echo "make eval-need          - need model vs top-frequency and TIFU-KNN on UCI Online Retail (MLflow)"
	@echo "make replay-retail      - the nightly replayed weekly over the last 12 weeks of 2011 of UCI Online Retail (REPLAY_HOME)"
	@echo "make replay-demo        - the nightly replayed weekly over the tiny demo world (REPLAY_HOME)"
	@echo "make lock   - re-resolve requirements.in into requirements.lock"

# The venv is rebuilt only when the lock or the package metadata change.
$(BIN)/.installed: requirements.lock setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found (Java 17 is required by Spark)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24" wheel "setuptools>=68"
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

setup: install
	$(BIN)/bundlecast setup

run: setup
	@start=$$(date +%s); \
	$(BIN)/bundlecast generate --scale $(DEMO_SCALE) --seed 42 --date $(DEMO_DATE) && \
	$(BIN)/bundlecast run nightly --date $(DEMO_DATE) && \
	$(BIN)/bundlecast run hourly --date $(DEMO_DATE) --summary && \
	echo "make run: demo done in $$(( $$(date +%s) - start )) s"

# The local production stack (Postgres, moto S3, Spark master + 2 workers, MLflow server,
# Airflow api-server/scheduler/dag-processor/triggerer), no Docker; `make stack-down` stops it.
stack: setup
	$(BIN)/bundlecast stack up

stack-down: install
	$(BIN)/bundlecast stack down

lint: install
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder) $(PYTEST_ARGS)

# The inner loop: no generated world, no Airflow, no install (about a minute and a half).
test-fast: install lint
	$(BIN)/python -m pytest -m "not slow and not world" -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(BIN)/python tests/benchmarks/bench_ingestion.py --scale $${BENCH_SCALE:-medium}
	BUNDLECAST_DRIVER_MEMORY=$${BENCH_DRIVER_MEMORY:-8g} \
	  $(BIN)/python tests/benchmarks/bench_relationships.py --scale $${BENCH_SCALE:-medium}
	BUNDLECAST_DRIVER_MEMORY=$${BENCH_DRIVER_MEMORY:-8g} \
	  $(BIN)/python tests/benchmarks/bench_models.py --scale $${BENCH_SCALE:-medium}
	BUNDLECAST_DRIVER_MEMORY=$${BENCH_DRIVER_MEMORY:-8g} \
	  $(BIN)/python tests/benchmarks/bench_offers.py --scale $${BENCH_SCALE:-medium}
	BUNDLECAST_DRIVER_MEMORY=$${BENCH_DRIVER_MEMORY:-8g} \
	  $(BIN)/python tests/benchmarks/bench_routing.py --scale $${BENCH_SCALE:-medium}
	BUNDLECAST_DRIVER_MEMORY=$${BENCH_DRIVER_MEMORY:-8g} \
	  $(BIN)/python tests/benchmarks/bench_pipeline.py --scales $${BENCH_PIPELINE_SCALES:-small,medium}

# Both Online Retail evaluations: the two files imported and ingested into $(EVAL_HOME), then
# the evaluation command in the same environment.
RETAIL_EVAL = test -d "$(RETAIL_DATA)" || { echo "error: $(RETAIL_DATA) not found (set RETAIL_DATA)"; exit 1; }; \
	export BUNDLECAST_HOME=$(EVAL_HOME) BUNDLECAST_JAR_CACHE=$(BUNDLECAST_HOME)/jars \
	  BUNDLECAST_DRIVER_MEMORY=$${BUNDLECAST_DRIVER_MEMORY:-8g} && \
	$(BIN)/bundlecast import online-retail $(RETAIL_DATA) --date 2011-12-10 && \
	$(BIN)/bundlecast ingest --date 2011-12-10 --datasets sites,items,users,events,orders,order_lines --no-expectations &&

eval-relationships: setup
	@$(RETAIL_EVAL) $(BIN)/bundlecast eval relationships --cutoff $(EVAL_CUTOFF)

# The need model on Online Retail against personal top-frequency and TIFU-KNN (next-basket
# recall@10 and NDCG@10, repeat and explore apart) and the need-date error: MLflow run in $(EVAL_HOME).
eval-need: setup
	@$(RETAIL_EVAL) $(BIN)/bundlecast need --date $${EVAL_NEED_DATE:-2011-12-09} --mode train

# `bundlecast replay` in its own state directory: it lands the history day by day, runs the
# nightly on every replay date and scores the decisions against later purchases. Resumable:
# run the same command again after an interruption. The report: $(REPLAY_HOME)/replay/report.html.
REPLAY_HOME ?= $(BUNDLECAST_HOME)/replay-$(REPLAY_OF)
replay-retail: REPLAY_OF = online-retail
replay-retail: setup
	@test -d "$(RETAIL_DATA)" || { echo "error: $(RETAIL_DATA) not found (set RETAIL_DATA)"; exit 1; }
	BUNDLECAST_HOME=$(REPLAY_HOME) BUNDLECAST_JAR_CACHE=$(BUNDLECAST_HOME)/jars \
	  BUNDLECAST_DRIVER_MEMORY=$${BUNDLECAST_DRIVER_MEMORY:-8g} \
	  $(BIN)/bundlecast replay --history $(RETAIL_DATA) --start 2011-09-15 --end 2011-12-01 --every 7d \
	  --retrain-every 28d --config conf/replay/online_retail.yaml

replay-demo: REPLAY_OF = demo
replay-demo: setup
	test -d $(REPLAY_HOME)-source/raw || BUNDLECAST_HOME=$(REPLAY_HOME)-source \
	  $(BIN)/bundlecast generate --scale tiny --seed 42 --date $(DEMO_DATE)
	BUNDLECAST_HOME=$(REPLAY_HOME) BUNDLECAST_JAR_CACHE=$(BUNDLECAST_HOME)/jars \
	  $(BIN)/bundlecast replay --history $(REPLAY_HOME)-source/raw --start 2026-11-04 --end 2026-11-11 --every 7d

lock:
	$(BIN)/pip install --quiet -r requirements.in
	$(BIN)/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf var .pytest_cache
