# relay: `make run` starts the relay (and the bundled demo upstream), `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.yaml
DEMO_UPSTREAM_PORT ?= 9100

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $@

# The demo upstream serves the `demo` model so a fresh machine gets answers without provider keys.
run: install
	@$(BIN)/python -m bench.fake_upstream --host 127.0.0.1 --port $(DEMO_UPSTREAM_PORT) & \
	fake=$$!; trap 'kill $$fake 2>/dev/null' EXIT INT TERM; \
	$(BIN)/relay serve --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

# ruff over the code, the tests and the bench; mypy --strict over relay/ (settings in pyproject.toml, setup.cfg)
lint: install
	$(BIN)/ruff check relay tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info relay.db relay.db-wal relay.db-shm
