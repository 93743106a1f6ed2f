# The two commands: `make run` (the whole product) and `make test` (the whole suite).
# Everything else here is the install they share; each step reruns only when its inputs change.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test install lint bench clean-var

run: install
	$(PY) manage.py dev

test: install chromium
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed node_modules/.installed contracts/artifacts/.built

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kwala needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "Could not create a virtualenv: on Debian, apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

# `npm install` (not `npm ci`): npm 11 writes lock files that list anvil's other-platform
# binaries without versions, which `npm ci` then refuses; install honours the lock as is.
node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

contracts/artifacts/.built: node_modules/.installed $(wildcard contracts/*.sol) contracts/build.mjs
	node contracts/build.mjs
	@touch $@

# Browser tests drive Debian's Chromium; Playwright never downloads a browser.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium fonts-liberation; \
	  else echo "Browser tests need Debian's Chromium: sudo apt-get install chromium"; exit 1; fi; }

lint: install
	$(VENV)/bin/ruff check .

bench: install
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# Forget all local data (database, Redis, chains): the next `make run` starts afresh.
clean-var:
	rm -rf var/
