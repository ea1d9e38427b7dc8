#!/usr/bin/env bash
# Installing Debian packages for the test and benchmark setup scripts.
# Sourced after lib/output.sh; needs root, or sudo.

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
