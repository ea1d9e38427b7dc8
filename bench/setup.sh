#!/usr/bin/env bash
# Installs what `make bench` needs on top of tests/setup_env.sh (which brings
# PostgreSQL and openssl): wrk and pgbouncer from Debian when missing, and the
# bench venv .venv/bench from bench/requirements.txt with uv
# (tests/support/venv.sh). Does nothing that is already done; the venv is
# rebuilt when its requirement list changes.
set -eu -o pipefail -o errtrace
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The buildpack's output vocabulary (-----> steps, detail, " !     " errors on stderr).
# shellcheck source=lib/output.sh
source "${REPO}/lib/output.sh"
# shellcheck source=tests/support/system.sh
source "${REPO}/tests/support/system.sh"
# shellcheck source=tests/support/venv.sh
source "${REPO}/tests/support/venv.sh"

trap 'system::on_error "${LINENO}" "$?"' ERR

function bench::ensure_packages() {
	local missing=()
	command -v wrk >/dev/null 2>&1 || missing+=(wrk)
	[[ -x /usr/sbin/pgbouncer ]] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
	if ((${#missing[@]} == 0)); then
		output::step "Debian packages for the benchmark: all there"
		return 0
	fi
	system::apt_install "${missing[@]}"
	# The package starts a system-wide pgbouncer where systemd runs; the
	# benchmark starts its own on a free port, so that one is left alone.
}

function main() {
	bench::ensure_packages
	uv::ensure "${REPO}/.venv"
	output::step "Bench venv .venv/bench"
	# site-packages ship .pyc, as pip leaves them on a dyno
	venv::ensure "${REPO}/.venv/bench" "${REPO}/bench/requirements.txt" --compile-bytecode
}

main "$@"
