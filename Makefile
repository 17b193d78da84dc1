# atss_d2: `make demo` runs the main job on the built-in dataset, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean

setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider

lint: setup
	$(PY) -m ruff check atss_d2 tools tests demo train_net.py
	$(PY) -m black --check -l 100 atss_d2 tools tests demo train_net.py

clean:
	rm -rf output
