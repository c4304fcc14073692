# Two entry points on a fresh machine: `make demo` (the smoke job) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint mutation venv browser clean

venv: $(STAMP)

# torch first: the CPU wheel where there is no CUDA, so nothing pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q torch; \
	else \
		$(PIP) install -q torch==2.13.0; \
	fi
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

# A Chromium for the browser test (tests/e2e/test_mlflow_browser.py): Playwright drives the system one, since
# its own browser download needs the internet. Debian: the `chromium` package (apt, as root or with sudo).
browser:
	@if [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium || echo /usr/lib/chromium/chromium)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; \
	else \
		echo "no apt-get: install a Chromium and set STARKV_CHROMIUM to its binary"; exit 1; \
	fi

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/starkv-eval run jobs/smoke.yaml

test: $(STAMP)
	@$(MAKE) --no-print-directory browser || echo "no Chromium could be installed: the browser test skips"
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest -q tests

# The inner loop: unit tests only (no Ray cluster, no MLflow server, no CLI subprocess run), under 3 minutes.
test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/python -m pytest -q -m "not slow" tests

# One-line wrong rules applied to a copy of the packages; each must fail its fast tests (not in `make test`).
mutation: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) tests/mutation_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf outputs .pytest_cache
