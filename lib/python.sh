#!/usr/bin/env bash
# Finding the app's Python, which heroku/python installed before this buildpack.
#
# heroku/python installs Python into BUILD_DIR/.heroku/python and points
# /app/.heroku/python at it with a symlink, because a Python install is not
# relocatable: during the build Python is run through /app, so that what it
# writes names the path it will run from. Its `export` file, sourced before
# this buildpack runs, puts /app/.heroku/python/bin first on PATH.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# python::find BUILD_DIR: print the command that runs the app's Python, or
# stop the build saying how to add heroku/python.
function python::find() {
	local build_dir="${1}"
	local installed="${build_dir}/.heroku/python/bin/python"
	if [[ ! -x "${installed}" ]]; then
		failure::abort <<-EOF
			Error: Python is not installed in this build.

			djpool runs after the Python buildpack, which installs Python
			and the app's requirements, and it found no Python in
			.heroku/python. Either heroku/python is missing from the app's
			buildpacks, or it comes after this buildpack.

			Set heroku/python first and this buildpack after it:
			  heroku buildpacks:clear
			  heroku buildpacks:add heroku/python
			  heroku buildpacks:add <this buildpack's URL>
			Then build again (git push heroku main). For more, see:
			https://devcenter.heroku.com/articles/using-multiple-buildpacks-for-an-app
		EOF
	fi
	# The `python` on PATH is the same install reached through /app: prefer it,
	# so paths Python reports are runtime paths. Without heroku/python's
	# export (another buildpack in between can drop it), use the install itself.
	local on_path
	if on_path="$(command -v python)" \
		&& [[ "$(python::real_prefix "${on_path}")" == "$(realpath "${build_dir}/.heroku/python")" ]]; then
		echo "${on_path}"
	else
		echo "${installed}"
	fi
}

# python::real_prefix PYTHON: the real path of that interpreter's sys.prefix.
function python::real_prefix() {
	"${1}" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null || true
}

# python::version PYTHON: e.g. "3.13.5".
function python::version() {
	"${1}" -c 'import platform; print(platform.python_version())'
}

# python::app_home PYTHON BUILD_DIR: the directory the app runs from (/app on
# Heroku), read from where Python thinks it lives (APP/.heroku/python).
function python::app_home() {
	local python="${1}" build_dir="${2}"
	local prefix home
	prefix="$("${python}" -c 'import sys; print(sys.prefix)')"
	home="${prefix%/.heroku/python}"
	# Python run from the build dir itself (no /app symlink) knows no better.
	if [[ "${home}" == "${prefix}" || "$(realpath "${home}")" == "$(realpath "${build_dir}")" ]]; then
		home="/app"
	fi
	echo "${home}"
}

# python::pip PYTHON: print the pip command to use, one word a line (for
# mapfile): the app's pip, else the pip wheel bundled in the standard library
# (heroku/python installs pip only for apps that use pip).
function python::pip() {
	local python="${1}"
	if "${python}" -m pip --version >/dev/null 2>&1; then
		printf '%s\n' "${python}" -m pip
		return 0
	fi
	local bundled
	bundled="$(
		"${python}" - <<-'PY' 2>/dev/null || true
			import glob, os
			try:
			    import ensurepip
			except ImportError:
			    raise SystemExit(0)
			wheels = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
			if wheels:
			    print(wheels[-1])
		PY
	)"
	if [[ -z "${bundled}" ]]; then
		failure::abort <<-EOF
			Error: pip is not available in the app's Python.

			djpool installs its two dependencies (SQLAlchemy and
			dj-database-url) with pip when the app does not list them,
			and this Python has neither pip nor the pip wheel that the
			standard library's ensurepip module bundles.

			Add them to the app's requirements so no install is needed:
			  SQLAlchemy>=2.0,<3
			  dj-database-url
			Then build again.
		EOF
	fi
	printf '%s\n' "${python}" "${bundled}/pip"
}

# python::compile_bytecode PYTHON DIR BUILD_DIR APP_HOME: precompile DIR so
# processes need not at every dyno boot; the .pyc files name the runtime
# path (APP_HOME/...), never the build dir. Any bytecode already in DIR goes
# first and every file is compiled again (-f): compileall would keep a .pyc
# that is up to date with its source even if it names the build dir.
function python::compile_bytecode() {
	local python="${1}" dir="${2}" build_dir="${3}" app_home="${4}"
	find "${dir}" -name '__pycache__' -type d -prune -exec rm -rf {} +
	"${python}" -m compileall -q -f -j 0 -s "${build_dir}" -p "${app_home}" "${dir}" >/dev/null
}
