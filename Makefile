# make test   installs what is missing (tests/setup_env.sh), then runs the suite
# make lint   ruff on the Python, shellcheck on the shell scripts
# make demo   the sample app built with the buildpack, unpooled then pooled (tests/demo.py)
# Pass pytest arguments with: make test PYTEST_ARGS="-k reset -x"

PYTEST_ARGS ?=
SHELL_SCRIPTS = $(wildcard bin/* lib/*.sh tests/*.sh .ci/run)
PYTHON_DIRS = $(wildcard lib shim tests)

.PHONY: setup test lint demo

setup:
	bash tests/setup_env.sh

test: setup
	.venv/test/bin/pytest -q tests $(PYTEST_ARGS)

demo: setup
	.venv/test/bin/python tests/demo.py

lint: setup
	.venv/test/bin/ruff check $(PYTHON_DIRS)
	$(if $(SHELL_SCRIPTS),shellcheck --check-sourced --external-sources $(SHELL_SCRIPTS))
