#!/usr/bin/env bash
# Builds the Debian root filesystems that hold the newer interpreters and
# PostgreSQL, and the stacks' virtualenvs inside them; does nothing that is
# already done. Only Python 3.11 and PostgreSQL 15 come with this machine.
#   .venv/chroots/forky    Debian forky (testing): python3.14 (+ venv)
#   .venv/chroots/trixie   Debian trixie: python3.13 (+ venv), postgresql-17
#   .venv/stacks/<stack>   each chroot stack's venv, made with the chroot's
#                          Python and pip (tests/requirements/<stack>.txt)
# A stack venv lives in the repository, at the same path inside the chroot
# (tests/support/chroot.sh binds the repository there), so its scripts'
# shebangs name paths that exist inside, and the host sees its files. Its
# host-bin/ has, for each script in its bin/, a wrapper that runs it inside
# the chroot: tests/support/stacks.py hands those out as the stack's python
# and gunicorn, so a test starts a chroot stack like any other.
# A chroot is complete when its stamp holds the hash of what it was built from;
# a venv, when its stamp holds the hash of its requirements and of its chroot.
#
# Usage: bash tests/setup_chroots.sh [forky|trixie]...   (default: both)
set -eu -o pipefail -o errtrace
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="${REPO}/.venv"
CHROOTS="${VENVS}/chroots"
REQUIREMENTS="${REPO}/tests/requirements"
STAMP_NAME=".djpool-chroot.sha256"
VENV_STAMP_NAME=".djpool-requirements.sha256"

# What each chroot holds, and the stacks made in it (keep in step with
# CHROOT_STACKS in tests/support/stacks.py).
declare -A CHROOT_SUITE=([forky]=forky [trixie]=trixie)
# bookworm's debootstrap has no script for forky (testing): sid's is the same.
declare -A CHROOT_SCRIPT=([forky]=sid [trixie]=trixie)
declare -A CHROOT_PYTHON=([forky]=python3.14 [trixie]=python3.13)
# Installed by debootstrap. postgresql-17 is installed afterwards, with services
# kept from starting (see chroot::install_postgresql).
declare -A CHROOT_PACKAGES=(
	[forky]="python3.14,python3.14-venv"
	[trixie]="python3.13,python3.13-venv"
)
declare -A CHROOT_EXTRA=([forky]="" [trixie]="postgresql-17")
declare -A CHROOT_VENVS=(
	[forky]="py314-dj61-psycopg3 py314-dj60-psycopg2 djsuite-py314-dj61-psycopg3 djsuite-py314-dj61-psycopg2 celery-py314-dj61-psycopg3"
	[trixie]="py313-dj52-psycopg3"
)

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# shellcheck source=lib/output.sh
source "${REPO}/lib/output.sh"
# shellcheck source=tests/support/system.sh
source "${REPO}/tests/support/system.sh"

trap 'system::on_error "${LINENO}" "$?"' ERR

function system::ensure_tools() {
	local missing=()
	command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
	command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
	if ((${#missing[@]} > 0)); then
		system::apt_install "${missing[@]}"
	fi
	if [[ ! -f /usr/share/debootstrap/scripts/sid ]]; then
		output::error <<<"/usr/share/debootstrap/scripts/sid is missing: debootstrap is incomplete.
Reinstall it: apt-get install --reinstall -y debootstrap"
		return 1
	fi
}

# Prints the Debian archive this machine's apt uses: the first URI of a source
# that carries the machine's own suite (VERSION_CODENAME), from the deb822
# files in /etc/apt/sources.list.d/ or the one-line /etc/apt/sources.list.
# Only this machine's configuration says which mirror is reachable.
function system::debian_mirror() {
	local codename file uri
	codename="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)"
	for file in /etc/apt/sources.list.d/*.sources; do
		[[ -f "${file}" ]] || continue
		# One paragraph per source: print its URIs when its Suites has the codename.
		uri="$(awk -v suite="${codename}" '
			BEGIN { RS = ""; FS = "\n" }
			{
				uris = ""; found = 0
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); uris = $i }
					if ($i ~ /^Suites:/) {
						n = split($i, words, /[ \t]+/)
						for (j = 2; j <= n; j++) if (words[j] == suite) found = 1
					}
				}
				if (found && uris != "") { split(uris, first, /[ \t]+/); print first[1]; exit }
			}' "${file}")"
		if [[ -n "${uri}" ]]; then
			echo "${uri}"
			return 0
		fi
	done
	for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f "${file}" ]] || continue
		uri="$(awk -v suite="${codename}" '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i + 1) == suite) { print $i; exit }
			}' "${file}")"
		if [[ -n "${uri}" ]]; then
			echo "${uri}"
			return 0
		fi
	done
	output::error <<<"No Debian mirror for '${codename}' in /etc/apt/sources.list.d/*.sources or
/etc/apt/sources.list: debootstrap needs one. Add this machine's Debian archive to apt's sources."
	return 1
}

# Runs COMMAND... as root inside the chroot DIR, with /proc, /dev and /sys
# bound in a mount namespace of its own: the mounts vanish when it exits.
function chroot::exec() {
	local dir="$1"
	shift
	# shellcheck disable=SC2016 # the inner shell expands its own arguments
	system::as_root unshare --mount --propagation private -- /bin/sh -c '
		root="$1"; shift
		mount --rbind /proc "$root/proc" && mount --rbind /dev "$root/dev" &&
			mount --rbind /sys "$root/sys" && exec chroot "$root" "$@"
	' chroot-exec "${dir}" "$@"
}

# The files a process inside needs from the machine: name resolution, the
# CA bundle (pip reaches the index through a proxy that this bundle trusts).
function chroot::copy_host_files() {
	local dir="$1" bundle="${SSL_CERT_FILE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
	cp /etc/resolv.conf "${dir}/etc/resolv.conf"
	cp /etc/hosts "${dir}/etc/hosts"
	mkdir -p "${dir}/etc/ssl/certs"
	cp "${bundle}" "${dir}/etc/ssl/certs/ca-certificates.crt"
}

# apt-get install in the chroot, with no service started (policy-rc.d) and no
# cluster created: the tests make their own with initdb.
function chroot::install_packages() {
	local dir="$1"
	shift
	printf '#!/bin/sh\nexit 101\n' >"${dir}/usr/sbin/policy-rc.d"
	chmod 755 "${dir}/usr/sbin/policy-rc.d"
	mkdir -p "${dir}/etc/postgresql-common/createcluster.d"
	echo "create_main_cluster = false" >"${dir}/etc/postgresql-common/createcluster.d/djpool.conf"
	chroot::exec "${dir}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "$@" |& output::indent
}

function chroot::ensure() {
	local name="$1"
	local dir="${CHROOTS}/${name}" suite="${CHROOT_SUITE[${name}]}"
	local script="/usr/share/debootstrap/scripts/${CHROOT_SCRIPT[${name}]}"
	local stamp="${dir}/${STAMP_NAME}" want mirror
	want="$(sha256sum <<<"${suite} ${script} ${CHROOT_PACKAGES[${name}]} ${CHROOT_EXTRA[${name}]}" | cut -d ' ' -f 1)"
	if [[ -f "${stamp}" && "$(<"${stamp}")" == "${want}" ]]; then
		output::detail "${name}: complete"
		return 0
	fi
	mirror="$(system::debian_mirror)"
	output::step "Building the ${suite} root filesystem in .venv/chroots/${name} (a few minutes)"
	rm -rf "${dir}"
	mkdir -p "${CHROOTS}"
	# debootstrap mounts /proc and /sys in the target while it works; in a mount
	# namespace of its own they go away with it, even if it fails half-way.
	# On failure, its log is ${dir}/debootstrap/debootstrap.log. Only its
	# warnings and last line are shown, not one line per package.
	output::detail "debootstrap ${suite} from ${mirror}"
	system::as_root unshare --mount --propagation private -- \
		debootstrap --variant=minbase --include="${CHROOT_PACKAGES[${name}]}" \
		"${suite}" "${dir}" "${mirror}" "${script}" \
		|& sed -n -e '/^I: /!p' -e '/^I: Base system installed/p' | output::indent
	chroot::copy_host_files "${dir}"
	if [[ -n "${CHROOT_EXTRA[${name}]}" ]]; then
		output::detail "installing ${CHROOT_EXTRA[${name}]}"
		chroot::install_packages "${dir}" "${CHROOT_EXTRA[${name}]}"
	fi
	chroot::exec "${dir}" apt-get clean
	mkdir -p "${dir}${REPO}"
	echo "${want}" >"${stamp}"
	local version
	version="$(chroot::exec "${dir}" "${CHROOT_PYTHON[${name}]}" --version)"
	output::detail "${name}: ${version}"
}

# venv::ensure CHROOT STACK: python -m venv, then pip install -r, both inside.
# pip inside sees none of this machine's pip configuration (/etc/pip.conf,
# ~/.config/pip, /etc/xdg/pip): only PyPI, with the CA bundle copied in
# (PIP_CERT). The machine's find-links and local extra indexes do not exist in
# the chroot, so the environment is cleared for pip (env -i).
function venv::ensure() {
	local name="$1" stack="$2"
	local dir="${VENVS}/stacks/${stack}" requirements="${REQUIREMENTS}/${stack}.txt"
	local python="${CHROOT_PYTHON[${name}]}" stamp="${dir}/${VENV_STAMP_NAME}" want
	want="$(
		cat "${requirements}"
		cat "${CHROOTS}/${name}/${STAMP_NAME}"
		echo "${REPO}"
	)"
	want="$(sha256sum <<<"${want}" | cut -d ' ' -f 1)"
	if [[ -x "${dir}/host-bin/python" && -f "${stamp}" && "$(<"${stamp}")" == "${want}" ]]; then
		output::detail "${stack}: complete"
		return 0
	fi
	local count
	count="$(grep -cv -e '^#' -e '^$' "${requirements}")"
	output::detail "${stack}: installing ${count} requirements"
	rm -rf "${dir}"
	mkdir -p "${VENVS}/stacks"
	chroot::stack_exec "${name}" "${python}" -m venv "${dir}"
	chroot::stack_exec "${name}" "${dir}/bin/pip" install --quiet -r "${requirements}" |& output::indent
	venv::write_wrappers "${name}" "${dir}"
	echo "${want}" >"${stamp}"
}

# venv::write_wrappers CHROOT DIR: DIR/host-bin/NAME runs DIR/bin/NAME inside
# the chroot, in the caller's working directory, keeping the caller's pid.
function venv::write_wrappers() {
	local name="$1" dir="$2" script base
	mkdir -p "${dir}/host-bin"
	for script in "${dir}"/bin/*; do
		# python* are symlinks to the chroot's /usr/bin/python3.x: dangling out here.
		[[ -L "${script}" || (-f "${script}" && -x "${script}") ]] || continue
		base="${script##*/}"
		cat >"${dir}/host-bin/${base}" <<-EOF
			#!/bin/sh
			# Made by tests/setup_chroots.sh: runs ${script#"${REPO}/"} inside .venv/chroots/${name}.
			exec /bin/sh '${REPO}/tests/support/chroot.sh' '${CHROOTS}/${name}' '${REPO}' "\$(pwd)" '${script}' "\$@"
		EOF
		chmod 755 "${dir}/host-bin/${base}"
	done
}

# Runs COMMAND... in the chroot the way the tests do (tests/support/chroot.sh:
# the repository and /tmp bound at their own paths), with a clean environment.
function chroot::stack_exec() {
	local name="$1"
	shift
	system::as_root env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
		PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
		PIP_ROOT_USER_ACTION=ignore PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" \
		/bin/sh "${REPO}/tests/support/chroot.sh" "${CHROOTS}/${name}" "${REPO}" / "$@"
}

function main() {
	local names=("$@") name stack
	if ((${#names[@]} == 0)); then
		names=(forky trixie)
	fi
	for name in "${names[@]}"; do
		if [[ -z "${CHROOT_SUITE[${name}]+set}" ]]; then
			output::error <<<"Unknown chroot '${name}': the chroots are forky and trixie."
			return 1
		fi
	done
	system::ensure_tools
	output::step "Debian root filesystems under .venv/chroots/"
	for name in "${names[@]}"; do
		chroot::ensure "${name}"
	done
	output::step "Virtualenvs of the chroot stacks under .venv/stacks/"
	for name in "${names[@]}"; do
		for stack in ${CHROOT_VENVS[${name}]}; do
			venv::ensure "${name}" "${stack}"
		done
	done
}

main "$@"
