#!/usr/bin/env bash
# Run every uproxy test suite: scripts/test.sh [--no-san] [meson test args...]
#
# Installs missing dependencies (scripts/setup.sh), configures and builds
#   build/      release build with the criterion suites (its integration suite runs twice: on
#               the default backend, and as "build-epoll" with UPROXY_TEST_BACKEND=epoll), and
#   build-san/  debugoptimized build with AddressSanitizer + UndefinedBehaviorSanitizer (its
#               integration suite also runs twice, the second time as "build-san-epoll"),
#   build-fault/ ASan+UBSan build with -Dfault_injection=true: only its `faults` suite, once
#               per seed in FAULT_SEEDS (default "1 2 3", each a different fault sequence),
#   build-fault-rss/ the same without sanitizers, once (seed FAULT_RSS_SEED, default 4), where
#               the suite's RSS bounds are checked too,
# runs `meson test` in each (both always run; a failure in one does not stop the other), tallies
# the results from meson-logs/testlog.json and ends with one line: `N passed, N failed`
# (`, N skipped` appended when some were skipped). A build dir that fails to configure or build
# counts as 1 failed. Exit status 0 iff nothing failed and at least one test passed.
#
#   --no-san      skip the sanitizer build (quick local runs)
#   --no-fault    skip the fault-injection build
#   --no-epoll    skip the second integration runs (release and ASan) on the epoll backend
#   --no-fuzz     skip the brief libFuzzer run (scripts/fuzz.sh --brief)
#   other args    passed to both `meson test` runs, e.g. --suite unit, -v, --repeat 3
set -euo pipefail

usage() {
    sed -n '2,22s/^# \{0,1\}//p' "$0"
}

root="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd -- "$root"

san=1
fault=1
epoll=1
fuzz=1
meson_args=()
for arg in "$@"; do
    case "$arg" in
        --no-san) san=0 ;;
        --no-fault) fault=0 ;;
        --no-epoll) epoll=0 ;;
        --no-fuzz) fuzz=0 ;;
        -h | --help) usage; exit 0 ;;
        *) meson_args+=("$arg") ;;
    esac
done

# nginx and haproxy are real peers in the PROXY protocol tests: install them too.
scripts/setup.sh --bench

# One line about the machine, for reading CI logs (io_uring may be disabled or filtered).
uring_sysctl="$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 'n/a')"
printf 'test.sh: kernel %s, kernel.io_uring_disabled=%s, %s cpus\n' \
    "$(uname -r)" "$uring_sysctl" "$(nproc 2>/dev/null || echo '?')"

ncpu="$(nproc 2>/dev/null || echo 2)"
export MESON_TESTTHREADS="${MESON_TESTTHREADS:-$ncpu}"

ninja_args=()
ninja_help="$(ninja --help 2>&1 || true)" # exits 1 after printing the usage
if [[ "$ninja_help" == *--quiet* ]]; then
    ninja_args+=(--quiet) # no progress lines, only compiler output (warnings, errors)
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/uproxy-test.XXXXXX")"
trap 'rm -rf -- "$workdir"' EXIT

total_pass=0
total_fail=0
total_skip=0
summary=() # lines printed again at the end, one block per build dir

# Prefer Debian's python3 (meson depends on it); fall back to whatever python3 is on PATH.
python=""
for p in /usr/bin/python3 "$(command -v python3 || true)"; do
    if [[ -n "$p" && -x "$p" ]] && "$p" -c 'import json' >/dev/null 2>&1; then
        python="$p"
        break
    fi
done

# tally FILE... -> prints "PASSED FAILED SKIPPED" counted from meson's testlog.json files
# (one JSON object per line, with a "result" field).
tally() {
    local out
    if [[ -n "$python" ]] && out="$("$python" - "$@" <<'PY'
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                result = json.loads(line).get("result")
            except ValueError:
                failed += 1  # a truncated or corrupt record: do not let it pass silently
                continue
            if result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result == "SKIP":
                skipped += 1
            else:  # FAIL, TIMEOUT, UNEXPECTEDPASS, ERROR, INTERRUPT, anything unknown
                failed += 1
print(passed, failed, skipped)
PY
)"; then
        printf '%s\n' "$out"
        return 0
    fi
    # Fallback without python: pull every "result": "X" out with grep.
    local p=0 f=0 s=0 r
    while IFS= read -r r; do
        case "$r" in
            OK | EXPECTEDFAIL) p=$((p + 1)) ;;
            SKIP) s=$((s + 1)) ;;
            *) f=$((f + 1)) ;;
        esac
    done < <(cat -- "$@" | grep -o '"result": *"[A-Za-z_]*"' | sed 's/.*"\([A-Za-z_]*\)"$/\1/' || true)
    printf '%s %s %s\n' "$p" "$f" "$s"
}

# configure DIR MESON_OPTION... : set up DIR, or bring an existing DIR to these options.
# (Called in an `if`, where set -e does not apply: every step returns its failure explicitly.)
# The options last applied are kept in DIR/uproxy-test-options, so an unchanged DIR is left
# alone (no needless regeneration).
configure() {
    local dir="$1"
    shift
    local stamp="$dir/uproxy-test-options" wanted
    wanted="$(printf '%s\n' "$@")"
    if [[ -f "$dir/build.ninja" ]]; then
        if [[ -f "$stamp" && "$(cat -- "$stamp")" == "$wanted" ]]; then
            return 0
        fi
        meson configure "$dir" "$@" || meson setup --wipe "$dir" "$@" || return 1
    elif [[ -f "$dir/meson-private/coredata.dat" ]]; then
        meson setup --wipe "$dir" "$@" || return 1
    else
        meson setup "$dir" "$@" || return 1
    fi
    printf '%s\n' "$wanted" >"$stamp"
}

# suite NAME DIR TEST_ARGS -- MESON_OPTION... : configure, build and test one build dir.
suite() {
    local name="$1" dir="$2"
    shift 2
    local test_args=()
    while (($#)) && [[ "$1" != -- ]]; do
        test_args+=("$1")
        shift
    done
    shift # --
    local opts=("$@")

    printf '\n======== %s: configure (%s) ========\n' "$name" "${opts[*]}"
    if ! configure "$dir" "${opts[@]}" >"$workdir/$name.setup.log" 2>&1; then
        cat -- "$workdir/$name.setup.log"
        printf '%s: configure FAILED\n' "$name"
        total_fail=$((total_fail + 1))
        summary+=("[$name] configure FAILED (counted as 1 failed)")
        return 0
    fi
    printf '======== %s: build ========\n' "$name"
    if ! ninja -C "$dir" "${ninja_args[@]}"; then
        printf '%s: build FAILED\n' "$name"
        total_fail=$((total_fail + 1))
        summary+=("[$name] build FAILED (counted as 1 failed)")
        return 0
    fi

    printf '======== %s: meson test ========\n' "$name"
    rm -f -- "$dir"/meson-logs/testlog*.json
    local rc=0
    meson test -C "$dir" --no-rebuild --print-errorlogs "${test_args[@]}" "${meson_args[@]}" 2>&1 |
        tee -- "$workdir/$name.test.log" || rc=$?

    local logs=() l
    for l in "$dir"/meson-logs/testlog*.json; do
        [[ -f "$l" ]] && logs+=("$l")
    done
    local p=0 f=0 s=0
    if ((${#logs[@]})); then
        read -r p f s < <(tally "${logs[@]}")
    fi
    local note=""
    if ((rc != 0 && f == 0)); then
        f=1
        note=" (meson test exited $rc with no failed test in its log: counted as 1 failed)"
    fi
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    total_skip=$((total_skip + s))

    summary+=("[$name] meson test summary:")
    local line n=0
    while IFS= read -r line; do
        summary+=("    $line")
        n=$((n + 1))
    done < <(grep -E '^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout):|^No (suitable )?tests' \
        -- "$workdir/$name.test.log" || true)
    if ((n == 0)); then
        summary+=("    (none printed; meson test exited $rc)")
    fi
    summary+=("[$name] tallied from testlog.json: ok $p, failed $f, skipped $s$note")
}

suite build build -- -Dbuildtype=release -Dtests=enabled

# The release integration suite a second time on the epoll backend (the harness adds
# --backend epoll to every uproxy it starts): where io_uring is blocked (a container's seccomp
# profile, kernel.io_uring_disabled) uproxy runs on epoll, and must pass the same tests. Reuses
# build/ (nothing to configure or build); tests of io_uring-only figures skip themselves.
if ((epoll)); then
    UPROXY_TEST_BACKEND=epoll suite build-epoll build --suite integration -- \
        -Dbuildtype=release -Dtests=enabled
fi

if ((san)); then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    suite build-san build-san --timeout-multiplier 3 -- \
        -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false -Dtests=enabled
    # ... and its integration suite on the epoll backend too, under the sanitizers.
    if ((epoll)); then
        UPROXY_TEST_BACKEND=epoll suite build-san-epoll build-san --suite integration \
            --timeout-multiplier 3 -- \
            -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
            -Dtests=enabled
    fi
fi

# The faults suite under injected io_uring faults, at several seeds (each a different fault
# sequence); the release and ASan builds above keep fault injection compiled out. Only the
# first seed configures and builds; each run's log is tallied before the next one removes it.
# Under ASan the RSS bounds of the suite are not checked (a bare debugoptimized build checks
# them). About 20 s per seed after the build.
if ((fault)); then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    for seed in ${FAULT_SEEDS:-1 2 3}; do
        UPROXY_FAULT_SEED="$seed" suite "build-fault-seed$seed" build-fault \
            --suite faults --timeout-multiplier 3 -- \
            -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
            -Dtests=enabled -Dfault_injection=true
    done
    # One more seed without sanitizers, where the suite also checks that memory (RSS) returns
    # to its bound after the faults; ASan's quarantine and shadow memory hide that above.
    UPROXY_FAULT_SEED="${FAULT_RSS_SEED:-4}" suite "build-fault-rss-seed${FAULT_RSS_SEED:-4}" \
        build-fault-rss --suite faults -- \
        -Dbuildtype=debugoptimized -Dtests=enabled -Dfault_injection=true
fi

# The sources follow .clang-format (Linux style, 100 columns): a file that clang-format would
# change fails this check (counted as 1 test). The tests are not checked: their tables are
# laid out by hand.
printf '\n======== clang-format ========\n'
fmt_files=(src/*.c src/*.h include/uproxy/*.h)
if fmt_out="$(clang-format --dry-run --Werror "${fmt_files[@]}" 2>&1)"; then
    total_pass=$((total_pass + 1))
    summary+=("[clang-format] ${#fmt_files[@]} files in src/ and include/: clean (counted as 1 passed)")
else
    printf '%s\n' "$fmt_out" | head -40 || true
    total_fail=$((total_fail + 1))
    summary+=("[clang-format] src/ or include/ not formatted (counted as 1 failed): run clang-format -i")
fi

# libFuzzer targets (PROXY parser, config/address parser), a few seconds each: a crash fails.
if ((fuzz)); then
    printf '\n======== fuzz (brief) ========\n'
    if scripts/fuzz.sh --brief; then
        total_pass=$((total_pass + 1))
        summary+=("[fuzz] brief run of every target: ok (counted as 1 passed)")
    else
        total_fail=$((total_fail + 1))
        summary+=("[fuzz] brief run FAILED (counted as 1 failed; inputs in build-fuzz/crashes/)")
    fi
fi

printf '\n======== summary ========\n'
printf '%s\n' "${summary[@]}"
if ((total_pass == 0 && total_fail == 0)); then
    printf 'no test ran\n'
fi
final="$total_pass passed, $total_fail failed"
if ((total_skip > 0)); then
    final+=", $total_skip skipped"
fi
printf '%s\n' "$final"
if ((total_fail == 0 && total_pass > 0)); then
    exit 0
fi
exit 1
