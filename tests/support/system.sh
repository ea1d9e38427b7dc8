#!/usr/bin/env bash
# Installing Debian packages for the test and benchmark setup scripts, and
# their one way of failing. Sourced after lib/output.sh; needs root, or sudo.

# Usage: trap 'system::on_error "${LINENO}" "$?"' ERR
# One error line naming the setup script, the line and how to try again.
function system::on_error() {
	output::error <<<"${0} failed at line $1 (exit status $2).
Fix the error above and run it again: bash ${0}"
}

function system::as_root() {
	if [[ "$(id -u)" == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		output::error <<<"Installing Debian packages needs root, and sudo is not installed.
Run as root: apt-get update && apt-get install -y $*"
		return 1
	fi
}

# Usage: system::apt_install PACKAGE...
function system::apt_install() {
	output::step "Installing Debian packages: $*"
	system::as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	system::as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
