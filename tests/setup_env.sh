#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, and does nothing that
# is already done:
#   1. Debian packages that are missing: the PostgreSQL server (initdb),
#      openssl, PgBouncer, pip (apt-get update runs once, only if needed);
#   2. uv, from PyPI with pip, into .venv/bootstrap (unless uv is on PATH);
#   3. the virtualenvs, one per requirement list in tests/requirements/:
#      .venv/test for the runner and .venv/stacks/<name> for each stack.
# A venv is complete when its stamp file holds the hash of its requirement
# list and of the Python it was built with; anything else rebuilds it.
set -eu -o pipefail -o errtrace
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="${REPO}/.venv"
REQUIREMENTS="${REPO}/tests/requirements"
STACKS=(dj52-psycopg3 dj52-psycopg2 dj42-psycopg3 dj42-psycopg2)
# Venvs with more than a stack has, each for its own tests, also under .venv/stacks/:
# Django's own test suite (tests/django_suite.py), the worker types (tests/test_compat.py),
# OpenTelemetry's API and SDK (tests/test_observability.py).
EXTRA_VENVS=(
	djsuite-dj52-psycopg3 djsuite-dj52-psycopg2 djsuite-dj42-psycopg3 djsuite-dj42-psycopg2
	workers-dj52-psycopg3 workers-dj52-psycopg2
	otel-dj52-psycopg3
	celery-dj52-psycopg3
)

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The buildpack's output vocabulary (-----> steps, detail, " !     " errors on stderr).
# shellcheck source=lib/output.sh
source "${REPO}/lib/output.sh"
# shellcheck source=tests/support/system.sh
source "${REPO}/tests/support/system.sh"
# shellcheck source=tests/support/venv.sh
source "${REPO}/tests/support/venv.sh"

trap 'system::on_error "${LINENO}" "$?"' ERR

# The newest initdb: pg_config's bindir, then /usr/lib/postgresql/*/bin, then PATH.
# tests/support/postgres.py looks in the same places.
function system::find_initdb() {
	local bindir newest
	if command -v pg_config >/dev/null 2>&1; then
		bindir="$(pg_config --bindir 2>/dev/null || true)"
		if [[ -n "${bindir}" && -x "${bindir}/initdb" ]]; then
			echo "${bindir}/initdb"
			return 0
		fi
	fi
	newest="$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 || true)"
	if [[ -n "${newest}" && -x "${newest}" ]]; then
		echo "${newest}"
		return 0
	fi
	command -v initdb
}

function system::ensure_packages() {
	local missing=()
	system::find_initdb >/dev/null 2>&1 || missing+=(postgresql)
	command -v openssl >/dev/null 2>&1 || missing+=(openssl)
	# PgBouncer's package puts it in /usr/sbin, which is not on every PATH.
	command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
	python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
	if ((${#missing[@]} == 0)); then
		output::step "Debian packages: all there"
		return 0
	fi
	system::apt_install "${missing[@]}"
	if ! system::find_initdb >/dev/null 2>&1; then
		output::error <<<"initdb is still not found after installing postgresql.
Install the PostgreSQL server by hand: apt-get install -y postgresql"
		return 1
	fi
}

function main() {
	system::ensure_packages
	uv::ensure "${VENVS}"
	output::step "Virtualenvs under .venv/ (Python $(python3 -c 'import platform; print(platform.python_version())'))"
	venv::ensure "${VENVS}/test" "${REQUIREMENTS}/test.txt"
	local stack
	for stack in "${STACKS[@]}" "${EXTRA_VENVS[@]}"; do
		venv::ensure "${VENVS}/stacks/${stack}" "${REQUIREMENTS}/${stack}.txt"
	done
}

main "$@"
