#!/usr/bin/env bash
# How the build stops: a step that knows what went wrong prints its own error
# block (failure::abort); any other failing command is reported once by the
# ERR trap (failure::on_unhandled_error) instead of the build stopping silently.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# failure::setup: call once, before installing the traps. A file, not a
# variable, remembers that the failure was reported, so that an abort inside a
# command substitution (a subshell) is not reported a second time by the
# parent shell's trap.
function failure::setup() {
	FAILURE_MARKER="$(mktemp -t djpool-failure.XXXXXX)"
	trap 'rm -f "${FAILURE_MARKER}"' EXIT
}

# failure::abort <<-EOF ... EOF: print the error block read from stdin and stop.
function failure::abort() {
	output::error
	echo reported >"${FAILURE_MARKER}"
	exit 1
}

# The ERR trap (errtrace makes it fire in functions and subshells too).
function failure::on_unhandled_error() {
	local status="${1}" failing_command="${BASH_COMMAND}"
	if [[ -s "${FAILURE_MARKER}" ]]; then
		return 0
	fi
	echo reported >"${FAILURE_MARKER}"
	local stack="" frame=0 line function_name source_file
	while read -r line function_name source_file < <(caller "${frame}" || true); do
		stack+="${function_name} @ ${source_file##*/}:${line}"$'\n'
		((++frame))
	done
	output::error <<-EOF
		Internal error: the djpool buildpack failed unexpectedly.

		This command exited with status ${status}:
		${failing_command}

		The build stopped, so the running release is unchanged. Build
		again; if it fails the same way, report it with this build log.
		To deploy without pooling meanwhile, remove the buildpack:
		  heroku buildpacks:remove <this buildpack's URL>

		Stack trace:
		${stack%$'\n'}
	EOF
}
