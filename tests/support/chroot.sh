#!/bin/sh
# Runs a command inside one of the Debian root filesystems that
# tests/setup_chroots.sh builds, so that it can be treated like a process of
# this machine: the same absolute paths inside and out (the repository, /tmp
# with the tests' temporary directories, PostgreSQL's sockets and
# certificates), the same processes (/proc; no PID namespace), the same network.
#
# Usage (as root): sh tests/support/chroot.sh ROOT REPO CWD [--userspec=UID:GID] COMMAND...
#
# The binds are made in a mount namespace of the command's own (unshare
# --mount): they vanish when its last process exits, and nothing is left to
# unmount. unshare and chroot exec, so the command keeps this process's pid
# (a test can signal it, and its children see it as their parent).
# POSIX sh, not bash: it starts before every stack process and dash is quicker.
set -eu
if [ "$#" -lt 4 ]; then
	echo "usage: $0 ROOT REPO CWD [--userspec=UID:GID] COMMAND..." >&2
	exit 2
fi
# The inner script is in single quotes on purpose: its own shell expands it.
# shellcheck disable=SC2016
exec /usr/bin/unshare --mount --propagation private -- /bin/sh -c '
	set -eu
	root="$1" repo="$2" cwd="$3"
	shift 3
	/usr/bin/mount --rbind /proc "$root/proc"
	/usr/bin/mount --rbind /dev "$root/dev"
	/usr/bin/mount --rbind /sys "$root/sys"
	/usr/bin/mount --rbind /tmp "$root/tmp"
	mkdir -p "$root$repo"
	/usr/bin/mount --rbind "$repo" "$root$repo"
	userspec=""
	case "$1" in --userspec=*) userspec="$1"; shift ;; esac
	# chroot(8) goes to / inside: the shell inside goes on to the working directory.
	exec /usr/sbin/chroot ${userspec:+"$userspec"} "$root" /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$cwd" "$@"
' chroot.sh "$@"
