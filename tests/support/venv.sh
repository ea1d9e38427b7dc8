#!/usr/bin/env bash
# Virtualenvs made with uv from a requirement list, for the setup scripts
# (tests/setup_lint.sh, tests/setup_unit.sh, bench/setup.sh; tests/setup_env.sh
# has its own copy until it sources this file). Sourced after lib/output.sh and
# tests/support/system.sh.

# Sets UV to a usable uv: the one on PATH, else the one in .venv/bootstrap,
# else installs that one from PyPI with the machine's pip (python3-pip from
# Debian first, when the machine's python3 has none).
# Usage: uv::ensure VENVS_DIR
function uv::ensure() {
	local venvs="$1"
	if uv --version >/dev/null 2>&1; then # a working uv (not just a pyenv shim without one)
		UV="$(command -v uv)"
	elif [[ -x "${venvs}/bootstrap/bin/uv" ]]; then
		UV="${venvs}/bootstrap/bin/uv"
	else
		if ! python3 -m pip --version >/dev/null 2>&1; then
			system::apt_install python3-pip
		fi
		output::step "Installing uv into .venv/bootstrap"
		# --target needs no venv module and is allowed on an externally managed Python.
		python3 -m pip install --quiet --disable-pip-version-check --target "${venvs}/bootstrap" uv
		UV="${venvs}/bootstrap/bin/uv"
	fi
	export UV_PYTHON_DOWNLOADS=never # use this machine's python3, never fetch one
}

# Makes DIR a venv of the machine's python3 with REQUIREMENTS installed, unless
# it already is one: its stamp file holds the hash of the requirement list, of
# the extra `uv pip install` arguments and of the Python it was built with.
# Anything else rebuilds it. Needs UV (uv::ensure).
# Usage: venv::ensure DIR REQUIREMENTS [UV_PIP_INSTALL_ARG...]
function venv::ensure() {
	local dir="$1" requirements="$2"
	shift 2
	local name=".venv/${dir##*/.venv/}" stamp="${dir}/.djpool-requirements.sha256" python want
	python="$(python3 -c 'import sys; print(sys.executable)')"
	want="$(
		cat "${requirements}"
		if (($# > 0)); then echo "$*"; fi
		echo "${python}"
		"${python}" -c 'import sys; print(sys.version)'
	)"
	want="$(sha256sum <<<"${want}" | cut -d ' ' -f 1)"
	if [[ -x "${dir}/bin/python" && -f "${stamp}" && "$(<"${stamp}")" == "${want}" ]]; then
		output::detail "${name}: complete"
		return 0
	fi
	output::detail "${name}: installing $(grep -cv -e '^#' -e '^$' "${requirements}") requirements"
	rm -rf "${dir}"
	"${UV}" venv --quiet --python "${python}" "${dir}"
	"${UV}" pip install --quiet --python "${dir}/bin/python" "$@" -r "${requirements}"
	echo "${want}" >"${stamp}"
}
