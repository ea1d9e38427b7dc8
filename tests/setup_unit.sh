#!/usr/bin/env bash
# Installs what `make unit` needs, and nothing more (no PostgreSQL, no stack
# venvs): uv and the test runner's venv .venv/test from
# tests/requirements/test.txt. tests/setup_env.sh makes the same venv with the
# same stamp, so neither rebuilds what the other made.
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

function main() {
	uv::ensure "${REPO}/.venv"
	output::step "The test runner's venv for make unit"
	venv::ensure "${REPO}/.venv/test" "${REPO}/tests/requirements/test.txt"
}

main "$@"
