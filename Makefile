# Every target does its own set-up: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo check test faults topology bench lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cachework demo

# The unit tier (tests/unit): pure logic, no PostgreSQL, Redis, RabbitMQ or worker; under
# a minute, and it passes with no service running (tests/unit/conftest.py refuses them).
check: $(STAMP)
	$(PY) -m pytest tests/unit

# Both tiers: tests/ holds the integration and worker tests and tests/unit.
test: $(STAMP)
	$(PY) -m pytest

faults: $(STAMP)
	$(PY) -m pytest -m faults

# Production shapes (README "Production topology"): PgBouncer, Redis Sentinel and Cluster,
# RabbitMQ quorum queues and every Celery pool, each a private server on a loopback port.
topology: $(STAMP)
	$(PY) -m pytest -m topology

bench: $(STAMP)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .cachework .pytest_cache .hypothesis *.egg-info
