#!/usr/bin/env bash
# The .profile.d script that loads djpool in every process of every dyno
# (web, worker, release phase, heroku run). Each dyno sources
# .profile.d/*.sh in a bash shell at boot, before it runs the command.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# profile::write BUILD_DIR: (re)write .profile.d/djpool.sh.
#
# heroku/python's own .profile.d/python.sh does
#   export PYTHONPATH=${PYTHONPATH:-${HOME}}
# and the two scripts may run in either order (they are sourced in name
# order), so this one keeps that same default: whichever runs first, the
# result is the shim first, then the app's own value (or $HOME).
function profile::write() {
	local build_dir="${1}"
	mkdir -p "${build_dir}/.profile.d"
	cat >"${build_dir}/.profile.d/djpool.sh" <<-'EOF'
		# Written by the djpool buildpack: puts djpool's startup hook first on
		# PYTHONPATH so that every Python process of the app loads it.
		# Sourced at dyno boot: no exit, no set -e.
		case "${PYTHONPATH:-}" in
		    "${HOME}/.djpool/shim" | "${HOME}/.djpool/shim:"*) ;;
		    *) export PYTHONPATH="${HOME}/.djpool/shim:${PYTHONPATH:-${HOME}}" ;;
		esac
		# The interpreter djpool was installed for: any other Python started in
		# the dyno (the operating system's python3, say) leaves it alone.
		export DJPOOL_PYTHON_PREFIX="${HOME}/.heroku/python"
	EOF
}
