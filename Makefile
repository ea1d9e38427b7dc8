# make lint   the linters only (tests/setup_lint.sh installs them; no PostgreSQL):
#              ruff check, ruff format --check, mypy (lib/djpool, shim), shellcheck
#              (.shellcheckrc), shfmt -d and one function style (`function name() {`,
#              as lib/ and heroku-buildpack-python) on every shell script; make -k lint
#              runs every check even when one fails
# make format  rewrites every Python file (import order, ruff format) and shell
#              script (shfmt -w)
# make unit   the fast tier: tests/unit, no server (pytest with .venv/test, which
#              tests/setup_unit.sh makes without the rest of the test setup)
# make test   installs what is missing (tests/setup_env.sh), then runs the suite
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
# Every shell script: the entry points (bin/, and a test buildpack's */bin/), *.sh,
# .ci/run; tracked or new, never an ignored file (.venv/, build/).
SHELL_SCRIPTS = $(shell git ls-files --cached --others --exclude-standard 'bin/*' '*/bin/*' '*.sh' .ci/run)
# The shell style: tabs (shfmt's default), `&&` and `|` starting the continued
# line (-bn), case patterns indented in their switch (-ci), as heroku-buildpack-python.
SHFMT_FLAGS = -ln bash -bn -ci
LINT_BIN = .venv/lint/bin

.PHONY: setup unit-setup lint-setup lint lint-ruff lint-format lint-mypy lint-shellcheck lint-shfmt \
	lint-functions \
	format unit test demo django-suite

setup:
	bash tests/setup_env.sh

unit-setup:
	bash tests/setup_unit.sh

lint-setup:
	bash tests/setup_lint.sh

lint: lint-ruff lint-format lint-mypy lint-shellcheck lint-shfmt lint-functions

# ruff and mypy read their settings (and which files) from pyproject.toml.
lint-ruff: lint-setup
	$(LINT_BIN)/ruff check .

lint-format: lint-setup
	$(LINT_BIN)/ruff format --check .

lint-mypy: lint-setup
	$(LINT_BIN)/mypy

lint-shellcheck: lint-setup
	shellcheck $(SHELL_SCRIPTS)

lint-shfmt: lint-setup
	shfmt -d $(SHFMT_FLAGS) $(SHELL_SCRIPTS)

# Neither shellcheck nor shfmt has a rule for it: a definition without the keyword
# is listed and fails the check.
lint-functions:
	@! grep -nE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_:]*\(\)[[:space:]]*\{' $(SHELL_SCRIPTS) \
		|| { echo 'Define shell functions as: function name() {' >&2; false; }

# ruff format leaves import order to the linter's I rules: sort them first.
format: lint-setup
	$(LINT_BIN)/ruff check --select I --fix .
	$(LINT_BIN)/ruff format .
	shfmt -w $(SHFMT_FLAGS) $(SHELL_SCRIPTS)

unit: unit-setup
	.venv/test/bin/pytest -q tests/unit $(PYTEST_ARGS)

test: setup
	.venv/test/bin/pytest -q tests $(PYTEST_ARGS)

demo: setup
	.venv/test/bin/python tests/demo.py

django-suite: setup
	.venv/test/bin/python tests/django_suite.py --json build/django-suite/results.json $(DJANGO_SUITE_ARGS)

.PHONY: bench bench-startup

bench: setup
	bash bench/setup.sh
	.venv/bench/bin/python bench/run.py $(BENCH_ARGS)

bench-startup: setup
	bash bench/setup.sh
	.venv/bench/bin/python bench/startup.py
