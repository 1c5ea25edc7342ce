# The two commands: `make run` (set up and start everything) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.installed

.PHONY: run test worker lint migrate admin bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	touch $(STAMP)

## Create .venv if needed, migrate, then run web + worker + Flower until Ctrl-C.
run: $(STAMP)
	$(PY) manage.py runstack

## Run the whole test suite (sets up .venv first when missing): lint, import contracts, tests.
test: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

## One more inference worker in the foreground (same environment variables as `make run`).
## WORKER_QUEUES=inference,default makes it take light work too. Ctrl-C: warm shutdown.
WORKER_QUEUES ?= inference
worker: $(STAMP)
	$(PY) -m celery -A worker worker -Q $(WORKER_QUEUES) --pool=prefork -n inference-$$RANDOM@%h --loglevel=INFO

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

migrate: $(STAMP)
	$(PY) manage.py migrate

bench: $(STAMP)
	$(PY) -m bench.pipeline
	$(PY) -m bench.memory

clean:
	rm -rf var
