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
	format unit test demo django-suite test-stacks test-pg17 django-suite-py314

# The default suite runs the runtime tests on Python 3.14 too (DJPOOL_TEST_STACKS,
# tests/support/stacks.py): the forky root filesystem is part of the setup.
setup:
	bash tests/setup_env.sh
	bash tests/setup_chroots.sh forky

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

# make test-stacks  runtime and fault suites (and the buildpack on Python 3.13/3.14) on
#              every stack: Python 3.11, 3.13 and 3.14 (both root filesystems)
test-stacks: setup
	bash tests/setup_chroots.sh
	DJPOOL_TEST_STACKS=all .venv/test/bin/pytest -q tests/test_runtime.py tests/test_faults.py \
		tests/test_buildpack.py::test_an_app_on_a_newer_python_builds_and_pools $(PYTEST_ARGS)

# make test-pg17  the runtime and fault suites against PostgreSQL 17 (trixie root filesystem)
test-pg17: setup
	bash tests/setup_chroots.sh
	DJPOOL_TEST_PG=17 DJPOOL_TEST_STACKS=all .venv/test/bin/pytest -q tests/test_runtime.py \
		tests/test_faults.py $(PYTEST_ARGS)

# make django-suite-py314  Django's own suites on Python 3.14 + Django 6.1, both drivers:
#              serially, then --parallel 2 with POOL_SIZE=2 (a small dyno's pool)
django-suite-py314: setup
	.venv/test/bin/python tests/django_suite.py --stacks py314-dj61-psycopg3 py314-dj61-psycopg2 \
		--json build/django-suite/py314.json $(DJANGO_SUITE_ARGS)
	.venv/test/bin/python tests/django_suite.py --stacks py314-dj61-psycopg3 py314-dj61-psycopg2 \
		--parallel 2 --pool-size 2 --log-dir build/django-suite-p2 \
		--json build/django-suite/py314-p2.json $(DJANGO_SUITE_ARGS)
