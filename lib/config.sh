#!/usr/bin/env bash
# The app's config vars, as the build sees them: ENV_DIR holds one file per
# variable, named after it, holding its value. The build checks the POOL_*
# variables with the runtime's own code (djpool.check), so a value the
# runtime would reject fails the build and the running release stays up.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

CONFIG_POOL_VARS=(POOL_SIZE POOL_MAX_OVERFLOW POOL_TIMEOUT POOL_RECYCLE POOL_METRICS_INTERVAL POOL_DISABLED
	POOL_TRANSACTION_POOLER)
# The interpreter and djpool lib config::check_pool_vars checked with:
# config::pooling_disabled asks them the same way.
CONFIG_CHECKED_WITH=()

# config::run_with_pool_vars ENV_DIR COMMAND...: run COMMAND with the POOL_*
# config vars of ENV_DIR set, in a subshell, so they are never exported to
# the rest of the build.
function config::run_with_pool_vars() {
	local env_dir="${1}"
	shift
	(
		local name
		for name in "${CONFIG_POOL_VARS[@]}"; do
			unset "${name}"
			if [[ -f "${env_dir}/${name}" ]]; then
				export "${name}=$(<"${env_dir}/${name}")"
			fi
		done
		"$@"
	)
}

# config::check_pool_vars PYTHON ENV_DIR DJPOOL_LIB
function config::check_pool_vars() {
	local python="${1}" env_dir="${2}" djpool_lib="${3}"
	local settings status=0
	CONFIG_CHECKED_WITH=("${python}" "${djpool_lib}")
	settings="$(config::run_with_pool_vars "${env_dir}" \
		env PYTHONPATH="${djpool_lib}" "${python}" -m djpool.check 2>&1)" || status=$?
	if ((status != 0)); then
		failure::abort <<-EOF
			Error: a djpool config var is not valid.

			${settings}

			djpool checks the POOL_* config vars at build time, so that a
			bad value fails the build instead of running unpooled. Fix the
			value, or unset it to use the default, then build again:
			  heroku config:set NAME=VALUE
			  heroku config:unset NAME
			The variables, their defaults and allowed values are listed in
			docs/buildpack.md in the djpool buildpack's repository.
		EOF
	fi
	output::detail "${settings}"
}

# config::pooling_disabled ENV_DIR: succeeds when POOL_DISABLED is true there.
# The runtime answers (djpool.check --pooling-disabled), so the build holds no
# copy of the true words; it asks the interpreter and djpool lib that
# config::check_pool_vars checked the value with, so that runs first.
function config::pooling_disabled() {
	local env_dir="${1}"
	if ((${#CONFIG_CHECKED_WITH[@]} != 2)); then
		echo "config::pooling_disabled: run config::check_pool_vars first" >&2
		return 2
	fi
	config::run_with_pool_vars "${env_dir}" env PYTHONPATH="${CONFIG_CHECKED_WITH[1]}" \
		"${CONFIG_CHECKED_WITH[0]}" -m djpool.check --pooling-disabled
}
