#!/usr/bin/env bash
# The Cloud Native Buildpack's layers (bin/build only; the classic buildpack
# writes a slug instead, lib/slug.sh). Buildpack API 0.10:
# https://github.com/buildpacks/spec/blob/buildpack/0.10/buildpack.md#layer-types
#
# A layer is a directory in CNB_LAYERS_DIR plus <layer>.toml beside it, whose
# [types] say where it goes: launch (into the app image), build (to later
# buildpacks), cache (kept for the next build). A launch layer has the same
# absolute path at build and at launch, so what the build writes into it may
# name that path; it must not name anything else of the build (the
# buildpack's own dir, the platform dir, a cache-only layer): none of those
# exist at launch.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# layers::find_python: print the app's Python, the one in heroku/python's
# virtualenv (its venv layer sets VIRTUAL_ENV and puts venv/bin first on
# PATH for later buildpacks), or stop the build saying how to add heroku/python.
function layers::find_python() {
	local venv="${VIRTUAL_ENV:-}"
	if [[ -z "${venv}" || ! -x "${venv}/bin/python" ]]; then
		failure::abort <<-EOF
			Error: Python is not installed in this build.

			djpool runs after heroku/python, which installs Python and the
			app's packages into a virtualenv (VIRTUAL_ENV), and it found
			none. Either heroku/python is missing from the app's
			buildpacks, or it comes after djpool.

			List heroku/python first, then djpool, then heroku/procfile, in
			the app's project.toml (see docs/buildpack.md in djpool's repository):
			  [[io.buildpacks.group]]
			  id = "heroku/python"
			Then build again (git push heroku main).
		EOF
	fi
	echo "${venv}/bin/python"
}

# layers::python_prefix PYTHON: that interpreter's sys.prefix (the venv's
# path for a venv's python, whatever symlinks lead to it).
function layers::python_prefix() {
	"${1}" -c 'import sys; print(sys.prefix)'
}

# layers::fresh LAYER_DIR: an empty layer directory, whatever an earlier build
# or the cache left there; its <layer>.toml goes too (layers::declare writes it).
function layers::fresh() {
	local layer="${1}"
	rm -rf "${layer}" "${layer}.toml"
	mkdir -p "${layer}"
}

# layers::declare LAYER_DIR LAUNCH BUILD CACHE [KEY=VALUE...]: write
# <layer>.toml with these [types] (true/false) and a [metadata] table of
# string values. The lifecycle treats a layer without types as none of them.
function layers::declare() {
	local layer="${1}" launch="${2}" build="${3}" cache="${4}"
	shift 4
	local pair
	{
		echo "[types]"
		echo "launch = ${launch}"
		echo "build = ${build}"
		echo "cache = ${cache}"
		echo
		echo "[metadata]"
		for pair in "$@"; do
			printf '%s = "%s"\n' "${pair%%=*}" "${pair#*=}"
		done
	} >"${layer}.toml"
}

# layers::set_env LAYER_DIR SCOPE NAME.ACTION VALUE: one env file, e.g.
#   layers::set_env "${layer}" env.launch PYTHONPATH.prepend /layers/x/shim
# SCOPE is env, env.build, env.launch or env.launch/<process>. The lifecycle
# uses the file's contents as they are (no trailing newline, no shell).
function layers::set_env() {
	local layer="${1}" scope="${2}" file="${3}" value="${4}"
	mkdir -p "${layer}/${scope}"
	printf '%s' "${value}" >"${layer}/${scope}/${file}"
}

# layers::compile_bytecode PYTHON DIR: precompile DIR for the path it has at
# launch (the same as now), so processes need not at every start. Any bytecode
# already there goes first. Hash-based .pyc files, because the lifecycle
# resets every file's mtime when it exports a layer: a timestamp-based .pyc
# would no longer match its source at launch, as heroku/python's own layers
# avoid the same way (SOURCE_DATE_EPOCH, which selects this mode).
function layers::compile_bytecode() {
	local python="${1}" dir="${2}"
	find "${dir}" -name '__pycache__' -type d -prune -exec rm -rf {} +
	"${python}" -m compileall -q -f -j 0 --invalidation-mode checked-hash "${dir}" >/dev/null
}

# layers::ensure_no_build_paths LAUNCH_LAYER BUILD_PATH...: stop the build if
# a file of the launch layer names one of the paths that exist only during
# the build.
function layers::ensure_no_build_paths() {
	local layer="${1}"
	shift
	local path leaked=""
	for path in "$@"; do
		leaked+="$(grep -rlF -- "${path}" "${layer}" || true)"
	done
	if [[ -n "${leaked}" ]]; then
		failure::abort <<-EOF
			Internal error: files of djpool's launch layer name the build.

			These files refer to a directory that exists only during the
			build ($*):
			${leaked}

			Report this with the build log.
		EOF
	fi
}
