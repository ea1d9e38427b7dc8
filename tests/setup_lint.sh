#!/usr/bin/env bash
# Installs what `make lint` needs, and nothing more (no PostgreSQL, no stack
# venvs), skipping what is already there:
#   1. shellcheck and shfmt from Debian, when missing;
#   2. uv (tests/support/venv.sh), then the venv .venv/lint with the pinned
#      Python linters of tests/requirements/lint.txt.
set -eu -o pipefail -o errtrace
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# shellcheck source=lib/output.sh
source "${REPO}/lib/output.sh"
# shellcheck source=tests/support/system.sh
source "${REPO}/tests/support/system.sh"
# shellcheck source=tests/support/venv.sh
source "${REPO}/tests/support/venv.sh"

trap 'system::on_error "${LINENO}" "$?"' ERR

function lint::ensure_packages() {
	local missing=()
	command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
	command -v shfmt >/dev/null 2>&1 || missing+=(shfmt)
	if ((${#missing[@]} > 0)); then
		system::apt_install "${missing[@]}"
	fi
}

function main() {
	lint::ensure_packages
	uv::ensure "${REPO}/.venv"
	output::step "Linters for make lint"
	output::detail "shellcheck $(shellcheck --version | sed -n 's/^version: //p'), shfmt $(shfmt --version)"
	venv::ensure "${REPO}/.venv/lint" "${REPO}/tests/requirements/lint.txt"
}

main "$@"
