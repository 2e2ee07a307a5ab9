# Two commands on a fresh machine: `make demo` and `make test`. Everything else is
# a step of those two. Every target is idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
KERNELS_STAMP := rec_core/__pycache__/.kernels-stamp
KERNEL_SOURCES := rec_core/kernels.py $(shell grep -rl --include='*.py' '@njit' rec_core)
SCALE ?= default
export PYTHONPATH := $(CURDIR)
export REC_DATA_DIR ?= $(CURDIR)/data
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__UNIT_TEST_MODE ?= False

.PHONY: setup demo dev-key chaos online-eval test lint format pipeline serve bench bench-warm-start profile-stages profile-incremental scaleout-large bench-milvus eval data train summary airflow-db airflow airflow-clean clean help

help:
	@echo "make demo   - set up, generate the default world, run the pipeline, summarise in DuckDB, serve the API on :3002"
	@echo "make test   - set up, lint, run every test"
	@echo "make chaos  - the fault suite (publish under load, kill -9, full disk, killed jobs) with a table of what held"
	@echo "make setup | lint | format | data | train | pipeline | summary | serve | dev-key | airflow-clean | bench | bench-warm-start | profile-stages | profile-incremental | scaleout-large | eval | online-eval | clean"

setup: $(STAMP) $(KERNELS_STAMP)

# The venv is rebuilt only when the lock or the project definition changes.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# numba's kernels compiled into their cache once (about a minute), not by the first tasks or test workers that call
# them (rec_core/kernels.py); again when a kernel's source changes. The stamp sits beside the cache it vouches for.
$(KERNELS_STAMP): $(STAMP) $(KERNEL_SOURCES)
	$(PY) -m rec_core.kernels
	mkdir -p $(@D) && touch $@

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Worker processes: the suite spends most of its wall time waiting on servers, DAG runs and subprocesses (about
# half a core busy on average), so three workers on two cores finish sooner. Whole files go to one worker (a
# module's fixtures, such as a trained model, are built once). Each worker, and what it spawns, runs torch and
# OpenMP on cores / workers threads (at least one; tests/conftest.py), not one per core each.
# TEST_WORKERS=0 runs everything in one process, on every core.
TEST_WORKERS ?= 3
test: setup lint
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

data: setup
	$(PY) -m jobs.generate_data --scale $(SCALE)

summary: setup
	$(PY) -m jobs.summarize

train: setup
	$(PY) -m jobs.train_towers

demo: setup data pipeline summary dev-key serve

# One key with every scope for this laptop, created once (its token kept in $(REC_DATA_DIR)/api/dev-token);
# once a key exists the API requires one. Use it as: curl -H "Authorization: Bearer $$(cat data/api/dev-token)" ...
dev-key: setup
	@$(PY) -m feed_api.keys ensure-dev

airflow-db: setup
	$(VENV)/bin/airflow db migrate >/dev/null

# The whole batch DAG, in-process, on embedded defaults (SQLite, Milvus Lite, Parquet under data/).
pipeline: airflow-db
	@test -f $(REC_DATA_DIR)/lake/CURRENT || $(MAKE) data
	$(VENV)/bin/airflow dags test recsys_pipeline

# The Airflow UI on embedded defaults (SQLite, LocalExecutor via `airflow standalone`), with the project's DAGs.
# Log in as `admin`; the password is generated once into $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated.
# standalone runs `airflow` from PATH for its parts, hence the venv first on PATH.
airflow: airflow-db
	@test -f $(REC_DATA_DIR)/lake/CURRENT || echo "No lake yet: trigger the generate_data DAG first (or run make data)."
	@echo "Airflow UI: http://localhost:$${AIRFLOW__API__PORT:-8080}  user: admin"
	@echo "Password: printed below at the first start, and kept in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/airflow standalone

# Airflow keeps every run's rows and task logs forever: this removes those older than AIRFLOW_KEEP_DAYS (run it from
# cron, say daily). Airflow 3 tasks cannot reach its database, so it is a command, not a DAG.
AIRFLOW_KEEP_DAYS ?= 30
airflow-clean: airflow-db
	$(VENV)/bin/airflow db clean --yes --skip-archive \
		--clean-before-timestamp "$$($(PY) -c 'import datetime as d; print(d.datetime.now(d.UTC) - d.timedelta(days=$(AIRFLOW_KEEP_DAYS)))')" \
		>/dev/null
	test ! -d "$(AIRFLOW_HOME)/logs" || find "$(AIRFLOW_HOME)/logs" -mindepth 1 \
		\( -type f -mtime +$(AIRFLOW_KEEP_DAYS) -delete \) -o \( -type d -empty -delete \)
	@echo "Airflow runs and task logs older than $(AIRFLOW_KEEP_DAYS) days removed from $(AIRFLOW_HOME)"

# The feed API on the live snapshot (port 3002 by default); it picks up newer snapshots without a restart.
serve: setup
	@test -f $(REC_DATA_DIR)/snapshots/LIVE || echo "note: no snapshot published under $(REC_DATA_DIR) yet: /ready answers 503 until \`make pipeline\` publishes one"
	$(PY) -m feed_api

bench: setup
	$(PY) -m benchmarks.run

# Wall, CPU and peak RSS of every pipeline stage as its own process, on a fresh root under
# $(REC_DATA_DIR)/bench/stages-$(SCALE) (docs/scaling.md's per-stage table): a cold run on the lake less its
# newest 10% of interactions and 1% of videos, then the incremental run after they arrive (warm start, cached
# captions). Slow: not part of `make bench`.
profile-stages: setup
	$(PY) -m benchmarks.stage_profile --scale $(SCALE) --incremental

# The incremental half of profile-stages again, on the root it left, put back as its cold run left it (the rewound
# lake current, the cold model promoted, the new captions out of the cache): a change to the incremental path
# measured against the last profile on the same machine and world, in a quarter of the time. Table: stages-again.md.
profile-incremental: setup
	$(PY) -m benchmarks.stage_profile --scale $(SCALE) --again

# recsys_pipeline on the large world, cold, on Airflow with PostgreSQL and two Celery workers (Redis as the broker)
# that share nothing but the lake on an S3-compatible store (moto's server): tests/test_scaleout_celery.py at
# SCALEOUT_SCALE=large. Prints each task's worker and wall time. Needs this machine's PostgreSQL and Redis (the test
# skips and says so without them); about half an hour on two cores.
scaleout-large: setup
	SCALEOUT_SCALE=large $(PY) -m pytest -s -q tests/test_scaleout_celery.py

# A release on a grown lake (10% new interactions, 1% new videos) from the current model's weights against from
# scratch, side by side: time, epochs and the served stack's quality with paired intervals. About 15 min at default.
bench-warm-start: setup
	$(PY) -m benchmarks.warm_start --scale $(SCALE)

# Recommendation quality on held-out data (synthetic + MovieLens), with ablations; writes data/eval/quality-*.md.
# MovieLens has 74 test users, so its default model is also trained with 4 more seeds.
eval: setup
	$(PY) -m benchmarks.quality --only synthetic
	$(PY) -m benchmarks.quality --only movielens --seeds 5

# Two online experiments through the traffic simulator (towers vs MostPop, and A/A) on the pipeline's snapshot,
# with their reports under $(REC_DATA_DIR)/reports/experiments/. Needs `make pipeline` first (a trained model).
# ONLINE_ARGS='--experiment NAME ARMS' runs other experiments instead (two model versions, say).
online-eval: setup
	$(PY) -m benchmarks.online_experiment $(ONLINE_ARGS)

# A scripted fault suite against real processes on loopback: publish under load, kill -9 the API, fill the
# inbox's disk (a tmpfs: needs root, else that row says "not run"), kill ingest_inbox/materialize mid-write.
# Prints a table; exits non-zero if a row fails. The tiny world is cached under $(REC_DATA_DIR)/chaos/world.
chaos: setup
	$(PY) -m benchmarks.chaos

clean:
	rm -rf data/lake data/truth data/features data/models data/snapshots data/inbox data/eval data/warehouse.duckdb .airflow

bench-milvus: setup
	$(PY) benchmarks/milvus_versions.py
