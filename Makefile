# make test   installs what is missing (tests/setup_env.sh), then runs the suite
# make lint   ruff on the Python, shellcheck on the shell scripts
# make demo   the sample app built with the buildpack, unpooled then pooled (tests/demo.py)
# make django-suite   Django's own database tests with and without the shim, every
#              label and stack (tests/django_suite.py, ~15 min; docs/compatibility.md)
# make bench  djpool against every alternative, side by side (bench/run.py, ~10 min;
#              docs/benchmark.md); make bench BENCH_ARGS="--quick" or "--rtt 1"
# make bench-startup   only the shim's start-up and per-request overhead (bench/startup.py)
# Pass pytest arguments with: make test PYTEST_ARGS="-k reset -x"

PYTEST_ARGS ?=
# e.g. make django-suite DJANGO_SUITE_ARGS="--stacks dj42-psycopg2 --labels transactions"
DJANGO_SUITE_ARGS ?=
BENCH_ARGS ?=
SHELL_SCRIPTS = $(wildcard bin/* lib/*.sh tests/*.sh tests/support/*.sh bench/*.sh .ci/run)
PYTHON_DIRS = $(wildcard lib shim tests)

.PHONY: setup test lint demo django-suite

setup:
	bash tests/setup_env.sh

test: setup
	.venv/test/bin/pytest -q tests $(PYTEST_ARGS)

demo: setup
	.venv/test/bin/python tests/demo.py

lint: setup
	.venv/test/bin/ruff check $(PYTHON_DIRS)
	$(if $(SHELL_SCRIPTS),shellcheck --check-sourced --external-sources $(SHELL_SCRIPTS))

django-suite: setup
	.venv/test/bin/python tests/django_suite.py --json build/django-suite/results.json $(DJANGO_SUITE_ARGS)

.PHONY: bench bench-startup

bench: setup
	bash bench/setup.sh
	.venv/bench/bin/python bench/run.py $(BENCH_ARGS)

bench-startup: setup
	bash bench/setup.sh
	.venv/bench/bin/python bench/startup.py
