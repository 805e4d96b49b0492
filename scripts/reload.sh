#!/usr/bin/env bash
# reload.sh: reload a running uproxy safely, without systemd: check the configuration with
# `uproxy --check` and send SIGHUP only if the check passed, so a broken file never reaches the
# running proxy (the systemd unit's ExecReload= lines do the same). See uproxy(1), SIGNALS.
#
#   scripts/reload.sh PID CONFIG
#
# PID is the running uproxy's process ID, CONFIG the file it was started with (--config). The
# check runs the same binary as PID (/proc/PID/exe, so an upgraded binary on disk does not judge
# a file the old process will parse) with PID's own command line, so command-line options that
# override the file are checked too; CONFIG must be the file that command line names, since
# SIGHUP re-reads that one. Set UPROXY=/path/to/uproxy to run another binary for the check.
#
# Exit status:
#   0  the check passed and SIGHUP was sent (uproxy then logs, and counts in
#      uproxy_config_reloads_total, whether it applied the file: a new listener whose address is
#      in use, for one, fails the reload there and the old configuration keeps running)
#   1  the check failed: nothing was sent, uproxy keeps running on its current configuration
#   2  usage error
#   3  PID is not a running uproxy started with --config CONFIG, or the signal could not be sent
set -euo pipefail

prog="reload.sh"

# usage: prints how to call this script, to stdout (asked for) or stderr (a mistake).
usage() {
    echo "usage: $prog PID CONFIG    check CONFIG with 'uproxy --check', then send SIGHUP to PID"
}

# die STATUS MESSAGE: one line on stderr, then exit.
die() {
    local status="$1"
    shift
    echo "$prog: $*" >&2
    exit "$status"
}

if [[ $# -eq 1 && ($1 == -h || $1 == --help) ]]; then
    usage
    exit 0
fi
if [[ $# -ne 2 ]]; then
    usage >&2
    exit 2
fi
pid="$1"
config="$2"
[[ $pid =~ ^[1-9][0-9]*$ ]] || die 2 "PID must be a process ID, not '$pid'"
[[ -f $config ]] || die 2 "$config: no such file"
[[ -r $config ]] || die 2 "$config: not readable"

# The process must exist and be uproxy: never signal whatever reused the PID.
[[ -d /proc/$pid ]] || die 3 "no process $pid"
comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
[[ $comm == uproxy ]] || die 3 "process $pid is '${comm:-?}', not uproxy: nothing sent"

# Its command line, to find the file SIGHUP will re-read and to repeat its options in the check.
args=()
if [[ -r /proc/$pid/cmdline ]] && mapfile -d '' -t args <"/proc/$pid/cmdline" && ((${#args[@]} > 0)); then
    args=("${args[@]:1}")
    running=""
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
        --config | -c) ((i + 1 < ${#args[@]})) && running="${args[i + 1]}" ;;
        --config=*) running="${args[i]#--config=}" ;;
        -c?*) running="${args[i]#-c}" ;;
        esac
    done
    [[ -n $running ]] || die 3 "uproxy $pid was started without --config: SIGHUP has no file to re-read"
    # A relative path is relative to the process's working directory, not ours.
    [[ $running == /* ]] || running="/proc/$pid/cwd/$running"
    [[ $config -ef $running ]] ||
        die 3 "uproxy $pid re-reads ${running#"/proc/$pid/cwd/"} on SIGHUP, not $config: nothing sent"
    # Check that file under the name CONFIG (absolute), with every other option as started.
    abs="$(realpath -- "$config")"
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[i]}" in
        --config | -c) args[i + 1]="$abs" ;;
        --config=*) args[i]="--config=$abs" ;;
        -c?*) args[i]="-c$abs" ;;
        esac
    done
else
    echo "$prog: cannot read /proc/$pid/cmdline: checking '--config $config' alone" \
        "(options given on uproxy's command line are not checked)" >&2
    args=(--config "$config")
fi

# The binary: $UPROXY, else the one PID runs, else uproxy from PATH.
if [[ -n ${UPROXY:-} ]]; then
    bin="$UPROXY"
elif readlink "/proc/$pid/exe" >/dev/null 2>&1; then
    bin="/proc/$pid/exe"
else
    bin="$(command -v uproxy || true)"
    [[ -n $bin ]] || die 3 "cannot use /proc/$pid/exe and no uproxy in PATH: set UPROXY=/path/to/uproxy"
fi

# The check resolves host names and binds nothing. Run it from the process's working directory
# when we may, so relative paths mean what they mean to uproxy.
set +e
out="$(cd "/proc/$pid/cwd" 2>/dev/null || true; "$bin" --check "${args[@]}" 2>&1)"
status=$?
set -e
if ((status != 0)); then
    [[ -z $out ]] || printf '%s\n' "$out" >&2
    die 1 "$config: check failed (uproxy --check exited $status): not reloaded," \
        "uproxy $pid keeps its current configuration"
fi

# Anything the check said besides "configuration OK" (a warning) goes on to stderr.
[[ -z $out ]] || grep -vxF 'configuration OK' <<<"$out" >&2 || true
kill -HUP "$pid" 2>/dev/null || die 3 "$config: configuration OK, but SIGHUP to $pid failed (permission?)"
echo "$prog: $config: configuration OK; sent SIGHUP to uproxy $pid"
