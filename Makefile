# Packdesk developer tasks. Everything runs from the project virtualenv in .venv.
#   make demo    SQLite demo with sample data on http://127.0.0.1:8000
#   make test    pytest on PostgreSQL + Redis (throwaway servers unless DATABASE_URL/REDIS_URL set)
#   make bench   benchmarks at 100,000 clients and 5,000,000 ledger entries, same services as
#                test (about 40 minutes; BENCH_ARGS=--quick for a smoke run of every step)
#   make check   Django system checks + no missing migrations

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
# Reinstall whenever pyproject.toml (deps, pins) changes.
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS  ?= --population 100000:5000000

# The demo is SQLite + in-process worker by design: drop any service URLs from the
# caller's shell so it can never migrate or seed a real database.
DEMO_ENV := env -u DATABASE_URL -u REDIS_URL
# Starts throwaway PostgreSQL/Redis for whichever URL is unset; fails if a service is down.
WITH_SERVICES := $(PY) scripts/with_services.py

.PHONY: venv install demo test bench check clean

venv install: $(STAMP)

$(PY):
	$(PYTHON3) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: $(STAMP)
	mkdir -p var
	$(DEMO_ENV) $(PY) manage.py migrate --noinput
	$(DEMO_ENV) $(PY) manage.py demo_data
	$(DEMO_ENV) $(PY) manage.py runserver 127.0.0.1:8000

test: $(STAMP)
	$(WITH_SERVICES) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(WITH_SERVICES) $(PY) -m bench $(BENCH_ARGS)

check: $(STAMP)
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf var $(STAMP)
