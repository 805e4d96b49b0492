#!/usr/bin/env bash
# Side-by-side benchmark: direct nginx vs uproxy vs HAProxy vs nginx stream, on loopback.
#
#   scripts/bench.sh [--quick] [--out DIR] [--targets direct,uproxy,haproxy,nginx]
#                    [--uproxy-args "--workers 2"] [...]    (scripts/bench.sh --help for all)
#
# Installs the benchmark tools (scripts/setup.sh --bench), builds a release uproxy in build-bench/,
# raises the open-file limit, then runs bench/bench.py, which writes DIR/latest.md, latest.json
# and latest.png (default DIR: bench/results/) and prints the tables: the shared-core and the
# dedicated-core layouts, and the slow readers. See bench/README.md.
set -euo pipefail

root="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd -- "$root"

scripts/setup.sh --bench

# A release build of the proxy binary in build-bench/ (only the binary: tests disabled, so that a
# test being edited elsewhere cannot stop the benchmark), unless another binary is given with
# --uproxy-bin.
want_build=1
for arg in "$@"; do
    case "$arg" in
        --uproxy-bin | --uproxy-bin=* | -h | --help) want_build=0 ;;
    esac
done
if ((want_build)); then
    builddir=build-bench
    log="$(mktemp "${TMPDIR:-/tmp}/uproxy-bench-build.XXXXXX")"
    trap 'rm -f -- "$log"' EXIT
    if [[ ! -f "$builddir/build.ninja" ]]; then
        wipe=()
        [[ -f "$builddir/meson-private/coredata.dat" ]] && wipe=(--wipe) # half-configured: start over
        if ! meson setup "${wipe[@]}" "$builddir" --buildtype=release -Dtests=disabled >"$log" 2>&1; then
            cat -- "$log" >&2
            echo "bench.sh: meson setup $builddir failed" >&2
            exit 1
        fi
    fi
    if ! ninja -C "$builddir" uproxy >"$log" 2>&1; then
        cat -- "$log" >&2
        echo "bench.sh: building $builddir/uproxy failed" >&2
        exit 1
    fi
    rm -f -- "$log"
    trap - EXIT
fi

# The hard limit is 20,000 here: the memory figure needs 5,000 fds in the client and 10,000 in
# each proxy; the slow readers 3,000 in bench.py itself, 6,000 in the proxy and 3,000 in the
# backend. Children (and bench.py itself) inherit the raised soft limit.
ulimit -n "$(ulimit -Hn)"

exec python3 bench/bench.py "$@"
