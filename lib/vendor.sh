#!/usr/bin/env bash
# djpool's runtime dependencies: SQLAlchemy (1.4 or later) and dj-database-url.
#
# The app's own copies are used when they are usable. Whatever is missing is
# installed into .djpool/vendor, a directory the shim appends to the END of
# sys.path: it can never shadow or replace a package of the app. Wheels are
# downloaded into the build cache, so a rebuild with a warm cache installs
# them without contacting any index.

# Redundant for the scripts that source this file, but tells shellcheck how it runs.
set -euo pipefail

# Pinned: the versions djpool is tested with. No dependencies are resolved
# (--no-deps): this is the complete list, minus what the app already has.
VENDOR_SQLALCHEMY_REQUIREMENTS=(
	'SQLAlchemy==2.1.9; python_version >= "3.11"'
	'SQLAlchemy==2.0.58; python_version < "3.11"'
	'typing-extensions==4.16.0'
)
VENDOR_DJ_DATABASE_URL_REQUIREMENTS=(
	'dj-database-url==3.1.2'
)

# vendor::plan PYTHON BUILD_DIR POOL_DISABLED RESULT_ARRAY: look at the app's
# own copies, say which are used, and put the requirements still to install
# in the array named RESULT_ARRAY. Stops the build when an app's copy comes
# first on sys.path but djpool cannot use it (unless pooling is disabled).
function vendor::plan() {
	local python="${1}" build_dir="${2}" pool_disabled="${3}"
	local -n vendor_plan_result="${4}"
	vendor_plan_result=()
	local report name state version detail
	report="$(vendor::_probe_app_packages "${python}" "${build_dir}")"
	while IFS=$'\t' read -r name state version detail; do
		case "${name}:${state}" in
			*:usable)
				output::detail "${name} ${version}: the app's own copy"
				;;
			SQLAlchemy:missing)
				vendor_plan_result+=("${VENDOR_SQLALCHEMY_REQUIREMENTS[@]}")
				;;
			dj-database-url:missing)
				vendor_plan_result+=("${VENDOR_DJ_DATABASE_URL_REQUIREMENTS[@]}")
				;;
			*)
				vendor::_unusable_app_copy "${name}" "${version}" "${detail}" "${pool_disabled}"
				;;
		esac
	done <<<"${report}"
}

# Prints one line per dependency: NAME<TAB>STATE<TAB>VERSION<TAB>DETAIL, where
# STATE is usable, missing, unusable or broken. Run from the build dir, as the
# app runs from its root, so that it sees what the app would import.
function vendor::_probe_app_packages() {
	local python="${1}" build_dir="${2}"
	(
		cd "${build_dir}"
		"${python}" - <<-'PY'
			import importlib
			import importlib.util

			def version_of(module, distribution):
			    version = getattr(module, "__version__", None)
			    if version:
			        return str(version)
			    try:
			        from importlib import metadata
			        return metadata.version(distribution)
			    except Exception:
			        return "(unknown version)"

			def probe(name, module_name, is_usable, why_not):
			    if importlib.util.find_spec(module_name) is None:
			        return (name, "missing", "", "")
			    try:
			        module = importlib.import_module(module_name)
			    except Exception as error:
			        detail = f"{type(error).__name__}: {error}".replace("\t", " ").replace("\n", " ")
			        return (name, "broken", "", detail)
			    version = version_of(module, name)
			    if is_usable(module, version):
			        return (name, "usable", version, "")
			    return (name, "unusable", version, why_not)

			def sqlalchemy_usable(module, version):
			    try:
			        return tuple(int(part) for part in version.split(".")[:2]) >= (1, 4)
			    except ValueError:
			        return False

			rows = [
			    probe("SQLAlchemy", "sqlalchemy", sqlalchemy_usable,
			          "djpool needs SQLAlchemy 1.4 or later"),
			    probe("dj-database-url", "dj_database_url",
			          lambda module, version: callable(getattr(module, "parse", None)),
			          "djpool needs dj_database_url.parse, which it lacks"),
			]
			for row in rows:
			    print("\t".join(row))
		PY
	)
}

function vendor::_unusable_app_copy() {
	local name="${1}" version="${2}" detail="${3}" pool_disabled="${4}"
	local what="${name} ${version}"
	if [[ -z "${version}" ]]; then
		what="${name}, which fails to import (${detail})"
	else
		what="${what}, but ${detail}"
	fi
	if [[ "${pool_disabled}" == "true" ]]; then
		output::warning <<-EOF
			Warning: djpool cannot use the app's ${name}.

			The app installs ${what}.
			POOL_DISABLED is set, so the build goes on; pooling will not
			work until this is fixed.
		EOF
		return 0
	fi
	failure::abort <<-EOF
		Error: djpool cannot use the app's ${name}.

		The app installs ${what}.
		The app's own packages always come first on sys.path, so djpool
		cannot bring a copy of its own: every process would run unpooled.

		Change the app's requirements (djpool works with SQLAlchemy 1.4
		or later, 2.x recommended, and any dj-database-url), for example:
		  SQLAlchemy>=2.0,<3
		  dj-database-url
		or remove ${name} from them if the app does not use it itself.
		To deploy without pooling meanwhile: heroku config:set POOL_DISABLED=1
	EOF
}

# vendor::install PYTHON VENDOR_DIR CACHE_DIR ENV_DIR REQUIREMENT...: install
# the requirements into VENDOR_DIR from wheels kept in the build cache,
# downloading only what the cache lacks.
function vendor::install() {
	local python="${1}" vendor_dir="${2}" cache_dir="${3}" env_dir="${4}"
	shift 4
	local requirements=("$@")
	local pip_command pip
	pip_command="$(python::pip "${python}")"
	mapfile -t pip <<<"${pip_command}"
	# No pip cache outside CACHE_DIR (the wheels are the cache), and no
	# warning when a local build runs as root.
	pip=(env PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore "${pip[@]}")

	# One set of wheels per interpreter and requirement list: when either
	# changes, the old wheels go, so the cache never grows without bound.
	local wheels="${cache_dir}/djpool/wheels" key
	key="$(
		"${python}" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())'
		printf '%s\n' "${requirements[@]}"
	)"
	if [[ ! -f "${wheels}/.key" || "$(<"${wheels}/.key")" != "${key}" ]]; then
		rm -rf "${wheels}"
		mkdir -p "${wheels}"
		echo "${key}" >"${wheels}/.key"
	fi

	local install_from_cache=(
		"${pip[@]}" install
		--disable-pip-version-check --no-input --quiet
		--no-index --find-links "${wheels}"
		--only-binary=:all: --no-deps --no-compile --no-warn-script-location
		--target "${vendor_dir}"
		"${requirements[@]}"
	)
	local log
	log="$(mktemp -t djpool-pip.XXXXXX)"
	if "${install_from_cache[@]}" >"${log}" 2>&1; then
		output::detail "Installed from the build cache, nothing downloaded"
		rm -f "${log}"
		return 0
	fi
	rm -f "${log}"

	output::detail "Downloading into the build cache"
	# The app's own index settings apply, as they do for heroku/python.
	if ! (
		local name
		for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
			if [[ -r "${env_dir}/${name}" ]]; then
				export "${name}=$(<"${env_dir}/${name}")"
			fi
		done
		"${pip[@]}" download \
			--disable-pip-version-check --no-input --progress-bar off \
			--only-binary=:all: --no-deps --dest "${wheels}" \
			"${requirements[@]}" |& { grep -E '^(Saved|ERROR)' || true; } | sed --unbuffered 's|^Saved .*/|Saved |' | output::indent
	); then
		failure::abort <<-EOF
			Error: could not download djpool's dependencies.

			djpool installs $(vendor::names "${requirements[@]}")
			privately because the app does not list them, and pip could
			not download them (see its output above).

			This is often a temporary problem with the network or with
			the Python Package Index: build again. To avoid the download,
			add them to the app's requirements instead, for example:
			  SQLAlchemy>=2.0,<3
			  dj-database-url
		EOF
	fi
	"${install_from_cache[@]}" |& output::indent
}

# "SQLAlchemy and typing-extensions": the distribution names, for messages.
function vendor::names() {
	local names=() requirement
	for requirement in "$@"; do
		names+=("${requirement%%[=<>; ]*}")
	done
	printf '%s\n' "${names[@]}" | sort -u | paste -sd ',' | sed 's/,/ and /g'
}

# vendor::describe_runtime PYTHON BUILD_DIR DJPOOL_ROOT: import djpool and its
# dependencies with sys.path laid out as the shim lays it out at runtime (the
# app's packages first, djpool's at the end), and say which copy each is.
function vendor::describe_runtime() {
	local python="${1}" build_dir="${2}" djpool_root="${3}"
	local report status=0
	report="$(
		cd "${build_dir}"
		"${python}" - "${djpool_root}" 2>&1 <<-'PY'
			import os
			import sys

			root = sys.argv[1]
			vendor = os.path.join(root, "vendor")
			sys.path.append(os.path.join(root, "lib"))
			sys.path.append(vendor)

			import dj_database_url
			import sqlalchemy
			from djpool import django_patch  # noqa: F401 - imports the pool and registry

			def origin(module):
			    private = os.path.realpath(module.__file__).startswith(os.path.realpath(vendor) + os.sep)
			    return "djpool's private copy" if private else "the app's own copy"

			print(f"SQLAlchemy {sqlalchemy.__version__}: {origin(sqlalchemy)}")
			print(f"dj-database-url: {origin(dj_database_url)}")
		PY
	)" || status=$?
	if ((status != 0)); then
		failure::abort <<-EOF
			Error: djpool does not import with the app's packages.

			With the app's packages first on sys.path and djpool's after
			them, as at runtime, importing djpool failed:
			${report}

			An older copy of one of SQLAlchemy's own dependencies in the
			app (typing-extensions, most often) can cause this: upgrade it
			in the app's requirements, or list SQLAlchemy>=2.0,<3 there.
			To deploy without pooling meanwhile: heroku config:set POOL_DISABLED=1
		EOF
	fi
	local line
	while IFS= read -r line; do
		output::detail "${line}"
	done <<<"${report}"
}
