#!/usr/bin/env bash
# Build (release) and run uproxy: scripts/run.sh --listen :8080 --upstream 127.0.0.1:80
#
# Installs missing build dependencies (scripts/setup.sh), configures build/ as a release build
# when it is not configured yet, builds the uproxy binary quietly (printing the compiler output
# only on failure), then replaces itself with build/uproxy and the given arguments.
set -euo pipefail

root="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd -- "$root"

scripts/setup.sh

builddir=build
log="$(mktemp "${TMPDIR:-/tmp}/uproxy-run.XXXXXX")"
trap 'rm -f -- "$log"' EXIT

quiet() {
    # Run "$@" with its output captured; show it only when it fails.
    if ! "$@" >"$log" 2>&1; then
        cat -- "$log" >&2
        printf 'run.sh: failed: %s\n' "$*" >&2
        exit 1
    fi
}

if [[ ! -f "$builddir/build.ninja" ]]; then
    if [[ -f "$builddir/meson-private/coredata.dat" ]]; then
        # A half-configured directory: start it over.
        quiet meson setup --wipe "$builddir" --buildtype=release
    else
        quiet meson setup "$builddir" --buildtype=release
    fi
fi

# Only the proxy binary: a test that does not compile must not stop the proxy from running.
quiet ninja -C "$builddir" uproxy

rm -f -- "$log"
trap - EXIT
exec "$builddir/uproxy" "$@"
