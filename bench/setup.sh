#!/usr/bin/env bash
# Installs what `make bench` needs on top of tests/setup_env.sh (which brings
# PostgreSQL, openssl and uv): wrk and pgbouncer from Debian when missing, and
# the bench venv .venv/bench from bench/requirements.txt with uv. Does nothing
# that is already done; a venv is rebuilt when its requirement list changes.
set -eu -o pipefail -o errtrace
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO}/.venv/bench"
REQUIREMENTS="${REPO}/bench/requirements.txt"
STAMP="${VENV}/.djpool-requirements.sha256"

export UV_PYTHON_DOWNLOADS=never
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The buildpack's output vocabulary (-----> steps, detail, " !     " errors on stderr).
# shellcheck source=lib/output.sh
source "${REPO}/lib/output.sh"
# shellcheck source=tests/support/system.sh
source "${REPO}/tests/support/system.sh"

setup::on_error() {
	output::error <<<"bench/setup.sh failed at line $1 (exit status $2).
Fix the error above and run it again: bash bench/setup.sh"
}
trap 'setup::on_error "${LINENO}" "$?"' ERR

system::ensure_packages() {
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

uv::find() {
	if command -v uv >/dev/null 2>&1; then
		command -v uv
	elif [[ -x "${REPO}/.venv/bootstrap/bin/uv" ]]; then
		echo "${REPO}/.venv/bootstrap/bin/uv"
	else
		output::error <<<"uv is missing: tests/setup_env.sh installs it (run: make setup)"
		return 1
	fi
}

venv::ensure() {
	local uv python want
	uv="$(uv::find)"
	python="$(python3 -c 'import sys; print(sys.executable)')"
	want="$(
		cat "${REQUIREMENTS}"
		echo "compile-bytecode" # site-packages ship .pyc, as pip leaves them on a dyno
		echo "${python}"
		"${python}" -c 'import sys; print(sys.version)'
	)"
	want="$(sha256sum <<<"${want}" | cut -d ' ' -f 1)"
	if [[ -x "${VENV}/bin/python" && -f "${STAMP}" && "$(<"${STAMP}")" == "${want}" ]]; then
		output::step "Bench venv .venv/bench: complete"
		return 0
	fi
	output::step "Bench venv .venv/bench: installing bench/requirements.txt"
	rm -rf "${VENV}"
	"${uv}" venv --quiet --python "${python}" "${VENV}"
	"${uv}" pip install --quiet --compile-bytecode --python "${VENV}/bin/python" \
		-r "${REQUIREMENTS}"
	echo "${want}" >"${STAMP}"
}

main() {
	system::ensure_packages
	venv::ensure
}

main "$@"
