#!/usr/bin/env bash
# The buildpack's one output vocabulary, as the Heroku build log shows it:
#   -----> a step
#          detail under a step (seven spaces)
#    !     a notice, warning or error block, on stderr
# Every message the build prints goes through these functions.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# Colour only when asked not to leave it out (https://no-color.org).
if [[ -z "${NO_COLOR:-}" ]]; then
	OUTPUT_BLUE=$'\e[1;34m'
	OUTPUT_RED=$'\e[1;31m'
	OUTPUT_YELLOW=$'\e[1;33m'
	OUTPUT_RESET=$'\e[0m'
else
	OUTPUT_BLUE=""
	OUTPUT_RED=""
	OUTPUT_YELLOW=""
	OUTPUT_RESET=""
fi

# output::step "Installing djpool"
function output::step() {
	echo "-----> ${1}"
}

# output::detail "Using SQLAlchemy 2.0.41 from the app"
function output::detail() {
	echo "       ${1}"
}

# some-command |& output::indent
function output::indent() {
	sed --unbuffered "s/^/       /"
}

# output::notice <<-EOF ... EOF  (the block is read from stdin)
function output::notice() {
	output::_block "${OUTPUT_BLUE}"
}

# output::warning <<-EOF ... EOF
function output::warning() {
	output::_block "${OUTPUT_YELLOW}"
}

# output::error <<-EOF ... EOF
# Say what went wrong, why, and what to do next.
function output::error() {
	output::_block "${OUTPUT_RED}"
}

function output::_block() {
	local colour="${1}"
	{
		echo
		sed --expression "s/^/${colour} !     /" --expression "s/\$/${OUTPUT_RESET}/"
		echo
	} >&2
}
