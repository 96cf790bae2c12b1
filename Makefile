# Every target does its own set-up: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test soak faults topology bench lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cachework demo

test: $(STAMP)
	$(PY) -m pytest

soak: $(STAMP)
	$(PY) -m pytest -m soak

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
