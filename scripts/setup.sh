#!/usr/bin/env bash
# Install (with apt-get) whatever uproxy needs that is missing.
#
#   scripts/setup.sh           build + test dependencies
#   scripts/setup.sh --bench   ... plus the benchmark tools (wrk, nginx, haproxy, perf, ...)
#   scripts/setup.sh --fuzz    ... plus clang and its sanitizer/libFuzzer runtime
#
# Idempotent: every package is checked with dpkg-query first; when all are present it prints
# nothing and touches nothing (no `apt-get update`). Messages go to stderr so that callers'
# stdout stays clean. Installing never starts a system service (no nginx/haproxy left on port 80).
set -euo pipefail

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "$0"
}

want_bench=0
want_fuzz=0
for arg in "$@"; do
    case "$arg" in
        --bench) want_bench=1 ;;
        --fuzz) want_fuzz=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'setup.sh: unknown argument: %s\n' "$arg" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf 'setup.sh: %s\n' "$*" >&2; }

# Each entry is a package, or alternatives separated by '|' (the first one is installed when
# none of them is present).
# libseccomp-dev: tests/integration/seccomp_launch blocks io_uring the way Docker's default
# seccomp profile does (suite `container`). clang-format: test.sh checks src/ and include/.
# openssl, curl: the TLS SNI routing tests run real s_server backends and s_client/curl clients.
pkgs=(gcc libc6-dev meson ninja-build pkg-config liburing-dev libcriterion-dev libseccomp-dev procps
    iproute2 clang-format openssl curl)
if ((want_bench)); then
    pkgs+=(wrk 'nginx-light|nginx' libnginx-mod-stream haproxy curl gnuplot-nox linux-perf strace python3)
fi
if ((want_fuzz)); then
    pkgs+=(clang libclang-rt-14-dev)
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    log "dpkg-query/apt-get not found: this script supports Debian-like systems only;"
    log "install these by hand: ${pkgs[*]}"
    exit 1
fi

is_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
    [[ "$status" == *" ok installed" ]]
}

missing=()
for entry in "${pkgs[@]}"; do
    IFS='|' read -r -a alts <<<"$entry"
    found=0
    for p in "${alts[@]}"; do
        if is_installed "$p"; then
            found=1
            break
        fi
    done
    if ((!found)); then
        missing+=("$entry")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

# Run as root directly, otherwise through sudo.
as_root=()
if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        log "not root and sudo is not available; as root, run: apt-get install ${missing[*]}"
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

apt_update() {
    local i
    for i in 1 2 3; do
        if "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >&2; then
            return 0
        fi
        log "apt-get update failed (attempt $i/3)"
        sleep $((i * 5))
    done
    return 1
}

log "missing packages: ${missing[*]//|/ or }"
log "running apt-get update"
apt_update

# Resolve alternatives now that the package lists are fresh: take the first with a candidate.
to_install=()
for entry in "${missing[@]}"; do
    IFS='|' read -r -a alts <<<"$entry"
    chosen="${alts[0]}"
    if ((${#alts[@]} > 1)); then
        for p in "${alts[@]}"; do
            cand="$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
            if [[ -n "$cand" && "$cand" != "(none)" ]]; then
                chosen="$p"
                break
            fi
        done
    fi
    to_install+=("$chosen")
done

# Forbid service starts while installing (nginx/haproxy postinst would start daemons on port 80).
# policy-rc.d exiting 101 is honoured by invoke-rc.d and deb-systemd-invoke. Only remove it
# afterwards if this script created it.
policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if ((created_policy)); then
        "${as_root[@]}" rm -f "$policy" || log "warning: could not remove $policy"
    fi
}
trap cleanup EXIT
if [[ ! -e "$policy" ]]; then
    # shellcheck disable=SC2016 # $1 is expanded by the inner sh
    "${as_root[@]}" sh -c 'printf "#!/bin/sh\n# temporary, created by uproxy scripts/setup.sh\nexit 101\n" >"$1" && chmod 755 "$1"' sh "$policy"
    created_policy=1
fi

log "installing: ${to_install[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${to_install[@]}" >&2

# Verify: apt-get can succeed while leaving an alternative unresolved only in odd setups, but be sure.
still=()
for p in "${to_install[@]}"; do
    is_installed "$p" || still+=("$p")
done
if ((${#still[@]})); then
    log "still missing after install: ${still[*]}"
    exit 1
fi
log "installed: ${to_install[*]}"
