#!/usr/bin/env bash
# Build uproxy's libFuzzer targets (tests/fuzz/fuzz_*.c) with clang and run each one.
#
#   scripts/fuzz.sh [--seconds N] [--target NAME]... [--brief]
#
#   --seconds N    fuzz each target for N seconds (default 60)
#   --target NAME  only this target (proxyproto, config); repeatable; default: all of them
#   --brief        a quick check for scripts/test.sh: 5 seconds per target (under 8 with start-up)
#
# Installs clang and its fuzzer runtime when missing (scripts/setup.sh --fuzz), compiles with
# -fsanitize=fuzzer,address,undefined into build-fuzz/, fuzzes each target on a temporary copy of
# its seed corpus (tests/fuzz/corpus/NAME, which is never modified), prints the executions per
# target, and copies any crashing input to build-fuzz/crashes/NAME/. Exit status: 0 when every
# target ran without a crash, 1 on a crash or a build failure, 2 on a usage error.
set -euo pipefail

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "$0"
}

root="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd -- "$root"

all_targets=(proxyproto config sni)
# The pure-logic sources the targets link against (config.c needs acl, addr, backend, log
# and sni).
lib_src=(src/acl.c src/addr.c src/backend.c src/config.c src/log.c src/proxyproto.c src/sni.c)
# -max_len per target: proxyproto never needs more than PROXYPROTO_MAX_LEN (1040) bytes;
# config lines are at most 1023 characters and a file has several.
declare -A max_len=([proxyproto]=2048 [config]=4096 [sni]=20480)

seconds=60
brief=0
targets=()
while (($#)); do
    case "$1" in
        --seconds)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || {
                printf 'fuzz.sh: --seconds needs a positive whole number\n' >&2
                exit 2
            }
            seconds="$2"
            shift
            ;;
        --target)
            [[ $# -ge 2 ]] || { printf 'fuzz.sh: --target needs a name\n' >&2; exit 2; }
            if [[ ! " ${all_targets[*]} " == *" $2 "* ]]; then
                printf 'fuzz.sh: unknown target %s (known: %s)\n' "$2" "${all_targets[*]}" >&2
                exit 2
            fi
            targets+=("$2")
            shift
            ;;
        --brief) brief=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'fuzz.sh: unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if ((brief)); then
    seconds=5
fi
if ((${#targets[@]} == 0)); then
    targets=("${all_targets[@]}")
fi

log() { printf 'fuzz.sh: %s\n' "$*" >&2; }

scripts/setup.sh --fuzz

cc="${CLANG:-clang}"
if ! command -v "$cc" >/dev/null 2>&1; then
    log "$cc not found after scripts/setup.sh --fuzz"
    exit 1
fi

out="$root/build-fuzz"
mkdir -p -- "$out/obj"
work="$(mktemp -d "${TMPDIR:-/tmp}/uproxy-fuzz.XXXXXX")"
trap 'rm -rf -- "$work"' EXIT

cflags=(-std=gnu11 -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter
    -Iinclude -D_GNU_SOURCE '-DUPROXY_VERSION="fuzz"'
    '-fsanitize=address,undefined' -fno-sanitize-recover=all)

# Library objects get coverage instrumentation without libFuzzer's main; the targets link it.
objs=()
for src in "${lib_src[@]}"; do
    obj="$out/obj/$(basename "$src" .c).o"
    if ! "$cc" "${cflags[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj"; then
        log "compiling $src failed"
        exit 1
    fi
    objs+=("$obj")
done

failed=0
summary=()
for t in "${targets[@]}"; do
    bin="$out/fuzz_$t"
    if ! "$cc" "${cflags[@]}" -fsanitize=fuzzer "tests/fuzz/fuzz_$t.c" "${objs[@]}" -lm \
        -o "$bin"; then
        log "building fuzz_$t failed"
        summary+=("$t: BUILD FAILED")
        failed=1
        continue
    fi

    corpus="$work/corpus-$t"
    artifacts="$work/artifacts-$t"
    mkdir -p -- "$corpus" "$artifacts"
    cp -- tests/fuzz/corpus/"$t"/* "$corpus"/
    dict=()
    if [[ -f "tests/fuzz/$t.dict" ]]; then
        dict=("-dict=tests/fuzz/$t.dict")
    fi
    log "fuzzing $t for ${seconds}s"
    rc=0
    # timeout(1) is a backstop only: libFuzzer stops itself at -max_total_time.
    timeout --kill-after=10 $((seconds + 60)) \
        "$bin" -max_total_time="$seconds" -print_final_stats=1 -max_len="${max_len[$t]}" \
        -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" "${dict[@]}" \
        "$corpus" >"$work/$t.log" 2>&1 || rc=$?

    execs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$work/$t.log" |
        tail -n 1)"
    crashes=("$artifacts"/*)
    if [[ ! -e "${crashes[0]}" ]]; then
        crashes=()
    fi
    if ((rc != 0 || ${#crashes[@]} > 0)); then
        failed=1
        tail -n 60 -- "$work/$t.log" >&2
        mkdir -p -- "$out/crashes/$t"
        for c in "${crashes[@]}"; do
            cp -- "$c" "$out/crashes/$t/"
            log "$t: crashing input kept in build-fuzz/crashes/$t/$(basename "$c"):"
            od -A d -c -- "$c" | head -n 20 >&2
        done
        summary+=("$t: CRASHED (exit $rc) after ${execs:-?} executions")
    else
        summary+=("$t: ${execs:-?} executions in ${seconds}s, no crash")
    fi
done

for line in "${summary[@]}"; do
    printf 'fuzz.sh: %s\n' "$line"
done
exit "$failed"
