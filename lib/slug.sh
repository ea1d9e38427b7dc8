#!/usr/bin/env bash
# What this buildpack puts into the slug: BUILD_DIR/.djpool, run from
# $HOME/.djpool (/app/.djpool) on a dyno.
#   .djpool/shim/sitecustomize.py   the startup hook, first on PYTHONPATH
#   .djpool/lib/djpool/             the runtime package
#   .djpool/vendor/                 dependencies the app lacks (may be absent)

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# slug::install_djpool BUILDPACK_DIR DJPOOL_ROOT: copy the shim and the
# package, leaving out any bytecode of the buildpack's own checkout. A
# previous install (a recompile of the same build dir) is replaced whole.
function slug::install_djpool() {
	local buildpack_dir="${1}" djpool_root="${2}"
	rm -rf "${djpool_root}"
	mkdir -p "${djpool_root}/lib"
	cp -R "${buildpack_dir}/shim" "${djpool_root}/shim"
	cp -R "${buildpack_dir}/lib/djpool" "${djpool_root}/lib/djpool"
	find "${djpool_root}" \( -name '__pycache__' -o -name '*.pyc' \) -prune -exec rm -rf {} +
}

# slug::ensure_no_build_dir_paths BUILD_DIR APP_HOME PATH...: stop the build
# if a file under PATH names the build dir, which does not exist at runtime.
# (Heroku CI builds in /app itself: there the build dir is the runtime dir.)
function slug::ensure_no_build_dir_paths() {
	local build_dir="${1}" app_home="${2}"
	shift 2
	if [[ "$(realpath -m "${build_dir}")" == "$(realpath -m "${app_home}")" ]]; then
		return 0
	fi
	local leaked
	leaked="$(grep -rlF -- "${build_dir}" "$@" || true)"
	if [[ -n "${leaked}" ]]; then
		failure::abort <<-EOF
			Internal error: files in .djpool name the build directory.

			The build runs in ${build_dir}, which does not exist when the
			app runs, and these files refer to it:
			${leaked}

			Report this with the build log.
		EOF
	fi
}
