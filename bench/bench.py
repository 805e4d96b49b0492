#!/usr/bin/env python3
"""Side-by-side benchmark on loopback: direct nginx vs uproxy (io_uring, and epoll) vs HAProxy vs nginx stream.

Run it through scripts/bench.sh, which installs the tools, builds uproxy and raises the open-file
limit first. bench/README.md explains every figure and how it is measured.

Everything it starts (a backend nginx, the proxies, wrk, curl, perf) runs from config files in a
private temporary directory, on loopback ports found free at start-up, and is stopped by PID on
exit, on Ctrl-C and on errors. Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import http.client
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ALL_TARGETS = ("direct", "uproxy", "uproxy-epoll", "haproxy", "nginx")
# The uproxy targets: the same binary, and the arguments that tell them apart (after
# --uproxy-args, so the row is what its name says). uproxy-epoll is what runs where io_uring is
# blocked (a container's default seccomp profile, kernel.io_uring_disabled; README.md, "Running
# in containers"): it needs the epoll backend and its --backend option (issue 11).
UPROXY_TARGETS = {"uproxy": [], "uproxy-epoll": ["--backend", "epoll"]}

BODY64 = "0123456789abcdef" * 4  # 64 bytes
BODY4K = "0123456789abcdef" * 256  # 4096 bytes
BODIES = {"64": ("/64", len(BODY64)), "4k": ("/4k", len(BODY4K))}
BIG_PATH = "/big.bin"
BIG_SIZE = 256 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")

# On the 2-core reference machine, quick takes about 4 minutes, full about 16 (bench/README.md).
MODES = {
    "quick": {"reps": 3, "duration": 2, "alone_duration": 2, "syscall_duration": 1, "mem_reps": 3, "slow_reps": 1,
              "slow_fresh": 50},
    "full": {"reps": 5, "duration": 10, "alone_duration": 5, "syscall_duration": 1, "mem_reps": 3, "slow_reps": 3,
             "slow_fresh": 200},
}
PHASES = ("load", "syscalls", "bulk", "alone", "slow", "memory")
# The layouts of the timed runs (bench/README.md, "Two layouts"): "shared" is the --pin layout
# (proxy and backend on one core); "alone" gives the proxy a CPU of its own.
LAYOUT_TITLES = {
    "shared": "Shared core",
    "alone": "Dedicated core",
}
SLOW_RCVBUF = 4096  # SO_RCVBUF of a slow reader (the kernel doubles it)
SLOW_MSS = 1448  # TCP_MAXSEG of a slow reader: an Internet client's MSS, not loopback's 65483
# What each slow reader asks for (a range of the big file); bench/README.md says why not 8 MiB.
SLOW_SIZE = 128 << 10
# Safety for a shared machine: TCP memory is one pool for every socket of the machine
# (net.ipv4.tcp_mem). Skip the round when the readers could take the machine past this share of
# the pressure threshold, and give up opening them beyond TCP_MEM_ABORT of it.
TCP_MEM_BUDGET, TCP_MEM_ABORT = 0.5, 0.75
SLOW_PATH = "/4k"  # what the fresh clients fetch while the slow readers are held
SLOW_TIMEOUT = 2.0  # seconds a fresh request may take before it counts as failed
SETTLE = 0.1  # seconds between runs: let closed connections finish tearing down
BUSY_WARN = 0.15  # cores of other work during the timed runs above which the table gets a warning

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# /proc helpers


def read_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (index 0 is field 3, the state), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def stat_field(fields: list[str], n: int) -> int:
    """Field n (1-based, as in proc(5)) from read_stat()'s list."""
    return int(fields[n - 3])


def descendants(pid: int) -> list[int]:
    """pid and every process below it (nginx: master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = read_stat(int(entry))
            if f:
                children.setdefault(stat_field(f, 4), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (fields 14 + 15: every thread of the process) summed over pids, seconds."""
    ticks = 0
    for pid in pids:
        f = read_stat(pid)
        if f:
            ticks += stat_field(f, 14) + stat_field(f, 15)
    return ticks / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def ctx_switches(pids: list[int]) -> int:
    """Voluntary + involuntary context switches of every thread of pids (/proc/PID/task/*/status;
    /proc/PID/status alone counts only the main thread)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


def tcp_mem_pages() -> int:
    """Kernel memory of all TCP sockets on the machine, pages (/proc/net/sockstat "TCP: ... mem")."""
    m = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
    return int(m.group(1)) if m else 0


def socket_mem_kib(ports: list[int]) -> tuple[int, int]:
    """(sockets, KiB of kernel memory) of the loopback TCP sockets with one of ports at either end:
    `ss -tm` skmem receive queue + send queue + forward allocation + option memory + backlog. Our
    own sockets only (the machine-wide /proc/net/sockstat figure moves with everyone else's)."""
    flt = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    try:
        cp = subprocess.run(["ss", "-tmnH", "state", "all", f"( {flt} )"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0, 0  # no ss (iproute2): the figure shows as 0 sockets
    n, total = 0, 0
    for m in re.finditer(r"skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f(\d+),w(\d+),o(\d+),bl(\d+)", cp.stdout):
        r, _t, f, w, o, bl = map(int, m.groups())
        n, total = n + 1, total + r + f + w + o + bl
    return n, total // 1024


def system_busy_seconds() -> float:
    """CPU time all CPUs spent not idle (/proc/stat: user nice system irq softirq steal), seconds."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of our waited-for children (wrk, curl, perf): getrusage(RUSAGE_CHILDREN)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def free_ports(n: int) -> list[int]:
    """n distinct loopback TCP ports that are free right now (the kernel picks them)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def pinned(cpus: set[int] | None):
    """preexec_fn for subprocess: the same as running the command under `taskset -c CPUS`."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


# ---------------------------------------------------------------------------------------------
# Servers we start and stop ourselves

STARTED: list["Server"] = []


class Server:
    """One process (and its children) that we started, known by PID; logs go to a file."""

    def __init__(self, name: str, argv: list[str], port: int, logfile: Path, cpus: set[int] | None):
        self.name, self.argv, self.port, self.logfile, self.cpus = name, argv, port, logfile, cpus
        self.popen: subprocess.Popen | None = None
        self.terminated = False
        self.known: dict[int, str] = {}  # pid -> starttime, for a safe final SIGKILL of children

    @property
    def pid(self) -> int:
        assert self.popen
        return self.popen.pid

    def start(self, timeout: float = 10.0) -> "Server":
        with open(self.logfile, "ab") as logf:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=pinned(self.cpus))
        STARTED.append(self)
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise BenchError(f"{self.name} exited with status {self.popen.returncode} at start-up:\n"
                                 + self.log_tail())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} is not accepting on port {self.port} after {timeout:.0f} s:\n"
                                     + self.log_tail())
                time.sleep(0.05)
        self.remember()
        return self

    def remember(self) -> None:
        for p in descendants(self.pid):
            f = read_stat(p)
            if f:
                self.known[p] = f[19]  # field 22, start time: tells a reused PID apart

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pids(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def ctxsw(self) -> int:
        return ctx_switches(self.pids())

    def rss(self) -> int:
        return rss_kib(self.pids())

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            text = []
        return "\n".join(text[-lines:]) or f"({self.logfile.name} is empty)"

    def terminate(self) -> None:
        """Send SIGTERM once (stop() waits for the exit); lets several servers stop in parallel."""
        if self.alive() and not self.terminated:
            self.remember()
            self.popen.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.alive():
            self.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        # Children left behind (a killed nginx master's worker): only the very processes we saw.
        for p, start in self.known.items():
            f = read_stat(p)
            if p != self.pid and f and f[19] == start:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        if self in STARTED:
            STARTED.remove(self)


def stop_all() -> None:
    for s in reversed(list(STARTED)):
        try:
            s.stop()
        except Exception as e:  # keep stopping the others
            log(f"warning: stopping {s.name}: {e}")


# ---------------------------------------------------------------------------------------------
# The bench context: temp dir, config files, targets


def fill(template: str, **values) -> str:
    text = (BENCH / template).read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z0-9_]+@", text)
    if left:
        raise BenchError(f"{template}: unfilled placeholders {sorted(set(left))}")
    return text


class Layout:
    """One set of running servers for the timed runs: a backend, the targets in front of it, and
    the CPUs of each part. "shared" (the --pin layout) and "alone" (each proxy on a CPU of its
    own) have separate instances, so re-pinning never touches a running process."""

    def __init__(self, name: str, desc: str, duration: int, server_cpus: set[int] | None,
                 client_cpus: set[int] | None, backend_cpus: set[int] | None):
        self.name, self.desc, self.duration = name, desc, duration
        self.server_cpus, self.client_cpus, self.backend_cpus = server_cpus, client_cpus, backend_cpus
        self.backend: Server | None = None
        self.instances: dict[str, Server] = {}  # target name -> the server it measures

    def url(self, target: str, path: str) -> str:
        return f"http://127.0.0.1:{self.instances[target].port}{path}"


class Bench:
    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.server_cpus, self.client_cpus = args.server_cpus, args.client_cpus
        self.shared = Layout("shared", args.pin_desc, args.duration, args.server_cpus, args.client_cpus,
                             args.server_cpus)
        self.alone: Layout | None = None
        if args.alone_cpus:
            proxy_cpus, rest = args.alone_cpus
            self.alone = Layout("alone", args.alone_desc, args.alone_duration, proxy_cpus, rest, rest)
        self.backend: Server | None = None
        self.instances = self.shared.instances  # the shared layout's, as before
        self.ports: dict[str, int] = {}
        self.n = 0

    def make(self, kind: str, upstream_port: int | None = None, pin: bool = True,
             cpus: set[int] | None = None) -> Server:
        """A new (not started) server of one kind on a fresh port: backend, uproxy, uproxy-epoll, haproxy, nginx;
        pinned to cpus if given, else to the server CPUs unless pin=False."""
        self.n += 1
        name = f"{kind}-{self.n}"
        port = free_ports(1)[0]
        logfile = self.tmp / f"{name}.log"
        if kind == "backend":
            conf = self.tmp / f"{name}.conf"
            (self.tmp / f"{name}.tmp").mkdir()
            conf.write_text(fill("nginx-backend.conf.in", DIR=self.tmp, NAME=name, PORT=port, BODY64=BODY64))
            argv = ["nginx", "-p", str(self.tmp), "-e", str(self.tmp / f"{name}.error.log"), "-c", str(conf)]
        elif kind == "nginx":
            conf = self.tmp / f"{name}.conf"
            conf.write_text(fill("nginx-stream.conf.in", DIR=self.tmp, NAME=name, PORT=port,
                                 UPSTREAM_PORT=upstream_port))
            argv = ["nginx", "-p", str(self.tmp), "-e", str(self.tmp / f"{name}.error.log"), "-c", str(conf)]
        elif kind == "haproxy":
            conf = self.tmp / f"{name}.cfg"
            conf.write_text(fill("haproxy.cfg.in", PORT=port, UPSTREAM_PORT=upstream_port))
            argv = ["haproxy", "-db", "-f", str(conf)]
        elif kind in UPROXY_TARGETS:
            argv = [str(self.args.uproxy_copy), "--listen", f"127.0.0.1:{port}",
                    "--upstream", f"127.0.0.1:{upstream_port}", "--log-level", "warn",
                    *shlex.split(self.args.uproxy_args), *UPROXY_TARGETS[kind]]
        else:
            raise ValueError(kind)
        return Server(name, argv, port, logfile, cpus if cpus is not None else (self.server_cpus if pin else None))

    def launch(self, kind: str, upstream_port: int | None = None, pin: bool = True,
               cpus: set[int] | None = None) -> Server:
        """make() and start(); on a fresh port again if it fails (another program may take the
        free port we picked before our server binds it), at most 3 times."""
        for attempt in range(3):
            srv = self.make(kind, upstream_port, pin, cpus)
            try:
                return srv.start()
            except BenchError:
                srv.stop()
                if attempt == 2:
                    raise
                log(f"warning: {srv.name} did not start; trying another port:\n{srv.log_tail(3)}")
        raise AssertionError("unreachable")

    def start_all(self) -> None:
        self.backend = self.start_layout(self.shared)
        self.ports = {t: s.port for t, s in self.instances.items()}
        if self.alone:
            self.start_layout(self.alone)

    def start_layout(self, lay: Layout) -> Server:
        lay.backend = self.launch("backend", cpus=lay.backend_cpus)
        log(f"{lay.name}: backend nginx pid {lay.backend.pid} on 127.0.0.1:{lay.backend.port}")
        for t in self.args.targets:
            if t == "direct":
                lay.instances[t] = lay.backend
            else:
                s = self.launch(t, lay.backend.port, cpus=lay.server_cpus)
                lay.instances[t] = s
                log(f"{lay.name}: {t} pid {s.pid} on 127.0.0.1:{s.port}")
                check_uproxy_backend(t, s)
        for t in self.args.targets:
            check_http(lay.instances[t].port, f"{t} ({lay.name})")
        return lay.backend

    def url(self, target: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[target]}{path}"


def io_uring_fds(pid: int) -> int:
    """io_uring instances the process holds (fds that are anon_inode:[io_uring])."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]"
        except OSError:
            pass
    return n


def check_uproxy_backend(target: str, srv: "Server") -> None:
    """A uproxy row must measure the backend its name says: uproxy-epoll holds no ring, and uproxy
    (--backend auto) one per worker, unless io_uring is blocked here and it fell back to epoll
    (it then logs a warning, which the Problems section shows)."""
    if target not in UPROXY_TARGETS:
        return
    rings = io_uring_fds(srv.pid)
    if target == "uproxy-epoll" and rings:
        raise BenchError(f"{srv.name}: started with --backend epoll but holds {rings} io_uring fd(s)")
    if target == "uproxy" and not rings:
        log(f"warning: {srv.name} holds no io_uring fd: it runs on epoll (io_uring blocked here?)")


def binary_has_backend_option(binary: Path) -> bool:
    """True if this uproxy knows --backend (the epoll backend, issue 11)."""
    cp = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10)
    return "--backend" in cp.stdout + cp.stderr


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def check_http(port: int, name: str) -> None:
    for path, size in BODIES.values():
        status, body = http_get(port, path)
        if status != 200 or len(body) != size:
            raise BenchError(f"{name}: GET {path} gave status {status} and {len(body)} bytes, "
                             f"expected 200 and {size}")


# ---------------------------------------------------------------------------------------------
# Measurements


def wrk_argv(url: str, conns: int, duration: int) -> list[str]:
    return ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "2s", "--latency",
            "-s", str(BENCH / "wrk-report.lua"), url]


def parse_wrk(out: str, what: str) -> dict:
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if not m:
        raise BenchError(f"{what}: no result line from wrk:\n{out[-2000:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["p50_ms"] = r["latency_us"]["p50"] / 1000
    r["p99_ms"] = r["latency_us"]["p99"] / 1000
    r["error_total"] = sum(r["errors"].values())
    return r


def run_wrk(b: Bench, target: str, conns: int, duration: int, wrap: list[str] | None = None,
            lay: Layout | None = None) -> dict:
    lay = lay or b.shared
    argv = (wrap or []) + wrk_argv(lay.url(target, BODIES[b.args.body][0]), conns, duration)
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30,
                        preexec_fn=pinned(lay.client_cpus))
    if cp.returncode != 0:
        said = (cp.stderr.strip() or cp.stdout.strip() or "no output").splitlines()
        raise BenchError(f"wrk -c{conns} at {target} exited {cp.returncode}: {said[-1]}\n"
                         f"command: {' '.join(argv)}\n{cp.stdout[-1000:]}{cp.stderr[-1000:]}")
    r = parse_wrk(cp.stdout, f"{target} c{conns}")
    r["stderr"] = cp.stderr.strip()
    return r


def measure_load(b: Bench, target: str, conns: int, lay: Layout | None = None) -> dict:
    """One wrk run: req/s, p50, p99, and CPU and context switches of the measured process (and CPU
    of the backend) per request."""
    lay = lay or b.shared
    srv, backend = lay.instances[target], lay.backend
    t0, sys0, k0 = time.monotonic(), system_busy_seconds(), children_cpu_seconds()
    c0, b0, x0 = srv.cpu(), backend.cpu(), srv.ctxsw()
    r = run_wrk(b, target, conns, lay.duration, lay=lay)
    time.sleep(SETTLE)  # teardown of wrk's connections is part of the cost
    c1, b1, x1 = srv.cpu(), backend.cpu(), srv.ctxsw()
    t1, sys1, k1 = time.monotonic(), system_busy_seconds(), children_cpu_seconds()
    n = max(r["requests"], 1)
    r.update(cpu_s=c1 - c0, cpu_us_req=(c1 - c0) / n * 1e6,
             backend_cpu_s=b1 - b0, backend_cpu_us_req=(b1 - b0) / n * 1e6, wrk_cpu_s=k1 - k0,
             ctxsw=x1 - x0, ctxsw_req=(x1 - x0) / n, layout=lay.name)
    # CPU that neither the servers nor wrk used: other work on the machine, in cores.
    ours = (c1 - c0) + (0 if srv is backend else b1 - b0) + (k1 - k0)
    r["other_load_cores"] = max(0.0, (sys1 - sys0) - ours) / (t1 - t0)
    return r


# What perf counts beside all system calls, when this kernel has it: io_uring_enter alone (uproxy's
# one data-path call) and context switches (the dedicated-core figures).
PERF_EXTRA = ("syscalls:sys_enter_io_uring_enter", "context-switches")
PERF_EVENTS = ["raw_syscalls:sys_enter"]


def syscall_method() -> str:
    """'perf' when `perf stat -e raw_syscalls:sys_enter` works here, else 'strace'. Also finds
    which of PERF_EXTRA perf can count (PERF_EVENTS)."""
    if shutil.which("perf"):
        cp = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
                            capture_output=True, text=True, timeout=30)
        if cp.returncode == 0 and re.search(r"^\d+,", cp.stderr, re.M):
            for ev in PERF_EXTRA:
                cp = subprocess.run(["perf", "stat", "-x,", "-e", ev, "true"],
                                    capture_output=True, text=True, timeout=30)
                if cp.returncode == 0 and re.search(rf"^\d+,[^,]*,{re.escape(ev)},", cp.stderr, re.M):
                    PERF_EVENTS.append(ev)
            return "perf"
    if shutil.which("strace"):
        return "strace"
    raise BenchError("neither perf (raw_syscalls:sys_enter) nor strace is usable")


def measure_syscalls(b: Bench, target: str, conns: int, lay: Layout | None = None) -> dict:
    """System calls made by the measured process (all threads) per request, during one wrk run;
    with perf also io_uring_enter calls and context switches (PERF_EVENTS)."""
    lay = lay or b.shared
    srv = lay.instances[target]
    pids = [str(p) for p in srv.pids()]
    out = b.tmp / "syscalls.out"
    out.unlink(missing_ok=True)
    extra = {}
    if b.args.syscall_method == "perf":
        wrap = ["perf", "stat", "-x,", "-e", ",".join(PERF_EVENTS), "-o", str(out), "-p", ",".join(pids), "--"]
        r = run_wrk(b, target, conns, b.args.syscall_duration, wrap, lay=lay)
        counts = {ev: int(n) for n, ev in re.findall(r"^(\d+),[^,]*,([^,]+),", out.read_text(), re.M)}
        if "raw_syscalls:sys_enter" not in counts:
            raise BenchError(f"perf stat gave no count:\n{out.read_text()}")
        calls = counts["raw_syscalls:sys_enter"]
        n = max(r["requests"], 1)
        if "syscalls:sys_enter_io_uring_enter" in counts:
            extra["enters_req"] = counts["syscalls:sys_enter_io_uring_enter"] / n
        if "context-switches" in counts:
            extra["perf_ctxsw_req"] = counts["context-switches"] / n
    else:
        argv = ["strace", "-c", "-f", "-q", "-o", str(out)] + [a for p in pids for a in ("-p", p)]
        st = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(1.0)  # let strace attach to every thread
            r = run_wrk(b, target, conns, b.args.syscall_duration, lay=lay)
        finally:
            st.send_signal(signal.SIGINT)
            try:
                st.wait(timeout=15)
            except subprocess.TimeoutExpired:
                st.kill()
                st.wait(timeout=5)
        m = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total\s*$", out.read_text(), re.M)
        if not m:
            raise BenchError(f"strace -c gave no total:\n{out.read_text()[-2000:]}")
        calls = int(m.group(1))
    time.sleep(SETTLE)
    return {"method": b.args.syscall_method, "syscalls": calls, "requests": r["requests"],
            "rps": r["rps"], "syscalls_req": calls / max(r["requests"], 1), "errors": r["errors"],
            "error_total": r["error_total"], "layout": lay.name, **extra}


def measure_bulk(b: Bench, target: str) -> dict:
    """The 256 MiB file through the target with curl: MB/s, and CPU seconds of the process per GiB."""
    srv = b.instances[target]
    c0 = srv.cpu()
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", "120",
            "-w", "%{http_code} %{size_download} %{speed_download} %{time_total}", b.url(target, BIG_PATH)]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=150, preexec_fn=pinned(b.client_cpus))
    time.sleep(SETTLE)
    c1 = srv.cpu()
    fields = cp.stdout.split()
    if cp.returncode != 0 or len(fields) != 4 or fields[0] != "200" or int(fields[1]) != BIG_SIZE:
        raise BenchError(f"{target}: curl {BIG_PATH} failed (exit {cp.returncode}): {cp.stdout} {cp.stderr}")
    size, speed = int(fields[1]), float(fields[2])
    return {"bytes": size, "seconds": float(fields[3]), "MBps": speed / 1e6, "cpu_s": c1 - c0,
            "cpu_s_GiB": (c1 - c0) / (size / 2**30)}


def warmup_plan(uproxy_args: str) -> tuple[int, int]:
    """(downloads, bytes each) for the memory warm-up: twice the size of one uproxy worker's
    provided-buffer ring (--buffers × --buffer-size, uproxy's defaults unless in uproxy_args), at
    most the whole big file, over 1 connection per target, or 4 per worker when there are several
    (SO_REUSEPORT spreads connections over the workers at random: each worker's ring must see
    traffic)."""
    opts = {"--buffers": 2048, "--buffer-size": 16384, "--workers": 1}
    words = shlex.split(uproxy_args)
    for i, w in enumerate(words):
        name, eq, val = w.partition("=")
        name = "--workers" if name == "-w" else name
        if name in opts:
            val = val if eq else (words[i + 1] if i + 1 < len(words) else "")
            if val == "auto":
                opts[name] = len(os.sched_getaffinity(0))
            elif val.isdigit():
                opts[name] = int(val)
    workers = max(1, opts["--workers"])
    return (1 if workers == 1 else 4 * workers), min(BIG_SIZE, 2 * opts["--buffers"] * opts["--buffer-size"])


def memory_round(b: Bench, rep: int) -> list[dict]:
    """RSS growth per idle connection, every target at once: fresh instances, warmed up, then each
    held at n idle connections by its own client process (bench/holdconns.py)."""
    n = b.args.mem_conns
    servers, clients, out = {}, {}, {}
    marks = [("start", time.monotonic())]
    try:
        for t in b.args.targets:
            # Not pinned: nothing is timed here, and the set-up is quicker on every CPU.
            servers[t] = b.launch("backend" if t == "direct" else t, b.backend.port, pin=False)
            check_http(servers[t].port, servers[t].name)
        cold = {t: srv.rss() for t, srv in servers.items()}
        marks.append(("warm-up", time.monotonic()))
        # Warm-up: a bulk transfer through each touches fixed pools (uproxy's whole provided-buffer
        # ring), so that the figure is the marginal memory of a connection, not a pool's first use.
        downloads, size = warmup_plan(b.args.uproxy_args)
        curls = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", "60", "-r", f"0-{size - 1}",
                                   f"http://127.0.0.1:{srv.port}{BIG_PATH}"])
                 for srv in servers.values() for _ in range(downloads)]
        for c in curls:
            if c.wait(timeout=90) != 0:
                raise BenchError(f"memory warm-up download failed (curl exit {c.returncode})")
        time.sleep(0.1)
        before = {t: srv.rss() for t, srv in servers.items()}
        marks.append(("connections", time.monotonic()))
        for t, srv in servers.items():
            clients[t] = subprocess.Popen([sys.executable, str(BENCH / "holdconns.py"), str(srv.port), str(n)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for t, c in clients.items():
            line = c.stdout.readline().strip()  # holdconns gives up after 60 s
            if not line.startswith("ready "):
                out[t] = {"ok": False, "error": f"holdconns: {line or 'exited'}"}
            else:
                out[t] = {"open_s": float(line.split()[1])}
        marks.append(("measure", time.monotonic()))
        time.sleep(0.3)
        for t, srv in servers.items():
            if not srv.alive():
                out[t] = {"ok": False, "error": f"{srv.name} died holding {n} connections:\n{srv.log_tail()}"}
            elif out[t].get("ok", True):
                after = srv.rss()
                out[t].update(ok=True, conns=n, rss_cold_kib=cold[t], rss_before_kib=before[t],
                              rss_after_kib=after, rss_KiB_conn=(after - before[t]) / n,
                              rss_KiB_conn_cold=(after - cold[t]) / n, rss_MiB_held=after / 1024)
        marks.append(("teardown", time.monotonic()))
    finally:
        # Closing stdin makes each client close its connections with a FIN (not an RST: uproxy
        # tears 5,000 reset connections down in ~2 s; see bench/README.md).
        for c in clients.values():
            try:
                c.stdin.close()
            except OSError:
                pass
        for c in clients.values():
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait(timeout=5)
        time.sleep(0.2)
        for srv in servers.values():
            srv.terminate()
        for srv in servers.values():
            srv.stop()
    marks.append(("end", time.monotonic()))
    log(f"memory round {rep}: " + ", ".join(f"{a} {t1 - t0:.1f} s" for (a, t0), (_, t1) in zip(marks, marks[1:])))
    return [{"rep": rep, "target": t, "kind": "memory", **out.get(t, {"ok": False, "error": "not measured"})}
            for t in b.args.targets]


def read_http_response(s: socket.socket, deadline: float) -> int:
    """Reads one HTTP/1.1 response with a Content-Length from s by the monotonic deadline; returns
    the body length. Raises OSError (socket.timeout included) or BenchError."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = s.recv(65536)
        if not chunk:
            raise BenchError("connection closed before the response headers")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or not m:
        raise BenchError(f"unexpected response: {head[:80]!r}")
    got, want = len(body), int(m.group(1))
    while got < want:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = s.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed after {got} of {want} body bytes")
        got += len(chunk)
    return got


def fresh_request(port: int, timeout: float) -> float:
    """One new connection, GET SLOW_PATH, the whole response read: seconds it took. Raises on any
    failure or when it takes longer than timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    with socket.socket() as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {SLOW_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        got = read_http_response(s, deadline)
    if got != len(BODY4K):
        raise BenchError(f"{got} body bytes, expected {len(BODY4K)}")
    return time.monotonic() - t0


def tcp_mem_pressure_pages() -> int:
    """net.ipv4.tcp_mem's pressure threshold (the middle value), pages."""
    return int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1])


def open_slow_readers(port: int, n: int, size: int, deadline: float) -> list[socket.socket]:
    """n connections to port with a SLOW_RCVBUF receive buffer (and an Internet MSS), each sending
    one GET for size bytes of the big file, never read. Connects in batches (non-blocking), so that
    the backlog of neither the proxy nor the backend overflows; stops with an error when the
    machine's TCP memory passes TCP_MEM_ABORT of the pressure threshold."""
    limit = TCP_MEM_ABORT * tcp_mem_pressure_pages()
    req = (f"GET {BIG_PATH} HTTP/1.1\r\nHost: bench\r\nRange: bytes=0-{size - 1}\r\n\r\n").encode()
    socks: list[socket.socket] = []
    try:
        for first in range(0, n, 250):
            group = []
            for _ in range(min(250, n - first)):
                s = socket.socket()
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)  # before connect: sets the window
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MSS)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                group.append(s)
            pending = set(group)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"slow readers: {len(pending)} connects still pending at the deadline")
                for s in writable(pending, left):
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(f"slow readers: connect failed: {os.strerror(err)}")
                    s.send(req)  # 70 bytes into an empty send buffer
                    pending.discard(s)
            if tcp_mem_pages() > limit:
                raise BenchError(f"slow readers: stopped at {len(socks)}: the machine's TCP memory passed "
                                 f"{TCP_MEM_ABORT:.0%} of net.ipv4.tcp_mem's pressure threshold")
        return socks
    except BaseException:
        for s in socks:
            s.close()
        raise


def writable(socks: set[socket.socket], timeout: float) -> list[socket.socket]:
    """poll() for writability of socks (select() stops at fd 1024)."""
    po = select.poll()
    byfd = {s.fileno(): s for s in socks}
    for fd in byfd:
        po.register(fd, select.POLLOUT)
    return [byfd[fd] for fd, _ in po.poll(timeout * 1000)]


def queued_bytes(s: socket.socket) -> int:
    """Bytes waiting unread in s's receive queue (FIONREAD)."""
    buf = bytearray(4)
    fcntl.ioctl(s.fileno(), termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def slow_round(b: Bench, rep: int, target: str) -> dict:
    """Issue 8: a fresh proxy (and backend) holds args.slow_conns slow readers, each stuck in an
    8 MiB response it never reads; then args.slow_fresh new clients, one after another, fetch a
    small file through it. Latency and failures of those, and the proxy's RSS while it holds the
    slow readers. Pinned like the shared layout; this script itself runs on the client CPUs."""
    n, fresh, size = b.args.slow_conns, b.args.slow_fresh, b.args.slow_size
    own_cpus = os.sched_getaffinity(0)
    socks: list[socket.socket] = []
    servers: list[Server] = []
    out: dict = {"rep": rep, "target": target, "kind": "slow", "slow_conns": n}
    marks = [("start", time.monotonic())]
    # Each reader leaves at most its response in kernel buffers (+ skb overhead: measured ≤ 1.5×).
    need = n * size * 1.5 / 4096
    room = TCP_MEM_BUDGET * tcp_mem_pressure_pages() - tcp_mem_pages()
    if need > room:
        out.update(ok=False, error=f"skipped: {n} readers × {size >> 10} KiB could take {need * 4096 / 2**20:.0f} MiB "
                   f"of TCP memory; {max(room, 0) * 4096 / 2**20:.0f} MiB left below {TCP_MEM_BUDGET:.0%} of "
                   "net.ipv4.tcp_mem's pressure threshold")
        return out
    try:
        if b.client_cpus:
            os.sched_setaffinity(0, b.client_cpus)
        backend = b.launch("backend")
        servers.append(backend)
        srv = b.launch(target, backend.port) if target != "direct" else backend
        if srv is not backend:
            servers.append(srv)
        check_http(srv.port, srv.name)
        out["rss_before_kib"] = srv.rss()
        marks.append(("open", time.monotonic()))
        socks = open_slow_readers(srv.port, n, size, time.monotonic() + 60)
        # Held: the readers' queues and the proxy's RSS have stopped growing (every buffer on the way
        # is full): unchanged for 0.4 s once every reader has response bytes queued (it went through
        # the proxy), or for 1 s when some still have none (a proxy that stopped serving them);
        # at most 10 s (measured: 1.6-1.8 s for HAProxy and nginx).
        marks.append(("fill", time.monotonic()))
        deadline, last, stable = time.monotonic() + 10, None, 0
        while time.monotonic() < deadline:
            time.sleep(0.2)
            q = [queued_bytes(s) for s in socks]
            state = (sum(1 for x in q if x), sum(q), srv.rss())
            stable = stable + 1 if state == last else 0
            last = state
            if stable >= (2 if state[0] == n else 5):
                break
        out.update(slow_with_data=last[0], slow_queued_bytes=last[1])
        if not srv.alive():
            raise BenchError(f"{srv.name} died holding {n} slow readers:\n{srv.log_tail()}")
        out["rss_held_kib"] = srv.rss()
        out["sockets"], kib = socket_mem_kib([srv.port, backend.port])
        out["socket_mem_MiB"] = kib / 1024
        marks.append(("fresh", time.monotonic()))
        # Budget: 50 ms a request or 6 s (3 timeouts), whichever is more (measured: ~0.5 ms each).
        lat, fails, budget = [], [], time.monotonic() + max(6.0, fresh * 0.05)
        for i in range(fresh):
            if time.monotonic() > budget:
                fails.append(f"{fresh - i} not tried: out of time")
                break
            try:
                lat.append(fresh_request(srv.port, SLOW_TIMEOUT))
            except (OSError, BenchError) as e:
                fails.append(f"{type(e).__name__}: {e}")
        failed = fresh - len(lat)
        out.update(fresh=fresh, fresh_ok=len(lat), fresh_failed=failed, fresh_errors=fails[:5])
        if lat:
            out.update(fresh_p50_ms=statistics.median(lat) * 1e3, fresh_max_ms=max(lat) * 1e3)
        if not srv.alive():
            raise BenchError(f"{srv.name} died holding {n} slow readers:\n{srv.log_tail()}")
        out["ok"] = True
        if target in UPROXY_TARGETS and srv.logfile.exists() and srv.logfile.read_text(errors="replace").strip():
            out["log_tail"] = srv.log_tail(10)  # warnings while holding them (uproxy logs at warn)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        out.update(ok=False, error=str(e) or type(e).__name__)
    finally:
        marks.append(("teardown", time.monotonic()))
        for s in socks:
            s.close()  # unread data: the kernel resets the connection
        time.sleep(0.2)
        for srv_ in servers:
            srv_.terminate()
        for srv_ in servers:
            srv_.stop()
        os.sched_setaffinity(0, own_cpus)
    marks.append(("end", time.monotonic()))
    out["phases_s"] = {a: round(t1 - t0, 2) for (a, t0), (_, t1) in zip(marks, marks[1:])}
    return out


# ---------------------------------------------------------------------------------------------
# Summary, outputs


def metrics_of(sample: dict) -> dict[str, float]:
    """The table figures contained in one raw sample."""
    k, c = sample["kind"], sample.get("conns")
    if k in ("load", "alone"):
        pre = "alone_" if k == "alone" else ""
        return {f"{pre}rps_c{c}": sample["rps"], f"{pre}p50_ms_c{c}": sample["p50_ms"],
                f"{pre}p99_ms_c{c}": sample["p99_ms"], f"{pre}cpu_us_req_c{c}": sample["cpu_us_req"],
                f"{pre}backend_cpu_us_req_c{c}": sample["backend_cpu_us_req"],
                f"{pre}ctxsw_req_c{c}": sample["ctxsw_req"]}
    if k in ("syscalls", "alone_syscalls"):
        pre = "alone_" if k == "alone_syscalls" else ""
        m = {f"{pre}syscalls_req_c{c}": sample["syscalls_req"]}
        for f in ("enters_req", "perf_ctxsw_req"):
            if f in sample:
                m[f"{pre}{f}_c{c}"] = sample[f]
        return m
    if k == "slow":
        m = {"slow_fresh_failed": sample["fresh_failed"], "slow_rss_MiB_held": sample["rss_held_kib"] / 1024,
             "slow_rss_KiB_reader": (sample["rss_held_kib"] - sample["rss_before_kib"]) / sample["slow_conns"],
             "slow_with_data": sample["slow_with_data"], "slow_socket_mem_MiB": sample["socket_mem_MiB"]}
        for f in ("fresh_p50_ms", "fresh_max_ms"):
            if f in sample:
                m[f"slow_{f}"] = sample[f]
        return m
    if k == "bulk":
        return {"bulk_MBps": sample["MBps"], "bulk_cpu_s_GiB": sample["cpu_s_GiB"]}
    if k == "memory":
        return {"rss_KiB_conn": sample["rss_KiB_conn"], "rss_KiB_conn_cold": sample["rss_KiB_conn_cold"],
                "rss_MiB_held": sample["rss_MiB_held"]}
    return {}


def summarise(samples: list[dict], targets: list[str]) -> dict:
    """Per target and metric: median, min, max, n; and ratios to direct and HAProxy (median of the
    per-repetition ratios, so the drift the interleaving spreads over all targets cancels)."""
    by: dict[str, dict[str, dict[int, float]]] = {t: {} for t in targets}
    for s in samples:
        if s.get("ok"):
            for m, v in metrics_of(s).items():
                by[s["target"]].setdefault(m, {})[s["rep"]] = v
    out: dict = {}
    for t in targets:
        out[t] = {}
        for m, reps in by[t].items():
            vals = list(reps.values())
            e = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
            for ref in ("direct", "haproxy"):
                refreps = by.get(ref, {}).get(m, {})
                ratios = [v / refreps[r] for r, v in reps.items() if refreps.get(r)]
                if ratios:
                    e[f"vs_{ref}"] = statistics.median(ratios)
            out[t][m] = e
    return out


def run_cmd(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (cp.stdout + cp.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def machine_info(args) -> dict:
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    git = lambda *a: run_cmd(["git", "-C", str(ROOT), *a])
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "include", "meson.build")
    buildtype = "?"
    try:
        opts = json.loads((args.uproxy_bin.parent / "meson-info" / "intro-buildoptions.json").read_text())
        buildtype = next(o["value"] for o in opts if o["name"] == "buildtype")
    except (OSError, ValueError, StopIteration):
        pass
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "haproxy": run_cmd(["haproxy", "-v"]).splitlines()[0],
        "nginx": run_cmd(["nginx", "-v"]),
        "wrk": run_cmd(["wrk", "-v"]).splitlines()[0],
        "curl": run_cmd(["curl", "--version"]).splitlines()[0],
        "perf": run_cmd(["perf", "--version"]),
        "uproxy_commit": git("rev-parse", "HEAD"),
        "uproxy_uncommitted_changes": bool(dirty),  # in src/, include/ or meson.build
        "uproxy_describe": git("describe", "--always", "--dirty"),
        "uproxy_version": run_cmd([str(args.uproxy_bin), "--version"]),
        "uproxy_binary": str(args.uproxy_bin),
        "uproxy_buildtype": buildtype,
        "uproxy_args": args.uproxy_args,
    }


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


# The table columns: (header, metric, what) where what is the number of decimals of the median,
# or "direct"/"haproxy" for the ratio to that target.
def alone_columns(conns: list[int]) -> tuple[list, list]:
    perf, cost = [], []
    for c in conns:
        perf += [(f"c{c} req/s", f"alone_rps_c{c}", 0), ("×direct", f"alone_rps_c{c}", "direct"),
                 ("×HAProxy", f"alone_rps_c{c}", "haproxy"), (f"c{c} p50 ms", f"alone_p50_ms_c{c}", 3),
                 (f"c{c} p99 ms", f"alone_p99_ms_c{c}", 2)]
        cost += [(f"CPU µs/req c{c}", f"alone_cpu_us_req_c{c}", 2), ("×HAProxy", f"alone_cpu_us_req_c{c}", "haproxy"),
                 (f"syscalls/req c{c}", f"alone_syscalls_req_c{c}", 2),
                 (f"io_uring_enter/req c{c}", f"alone_enters_req_c{c}", 2),
                 (f"ctx sw/req c{c}", f"alone_ctxsw_req_c{c}", 2)]
    return perf, cost


SLOW_COLUMNS = [("fresh p50 ms", "slow_fresh_p50_ms", 2), ("fresh max ms", "slow_fresh_max_ms", 1),
                ("fresh failed", "slow_fresh_failed", 0), ("readers with data", "slow_with_data", 0),
                ("RSS MiB held", "slow_rss_MiB_held", 1), ("RSS KiB/reader", "slow_rss_KiB_reader", 2),
                ("socket MiB", "slow_socket_mem_MiB", 0)]


def table_columns(conns: list[int], mem_conns: int) -> tuple[list, list]:
    perf = []
    for c in conns:
        perf += [(f"c{c} req/s", f"rps_c{c}", 0), ("×direct", f"rps_c{c}", "direct"),
                 ("×HAProxy", f"rps_c{c}", "haproxy"), (f"c{c} p99 ms", f"p99_ms_c{c}", 2)]
    cost = []
    for c in conns:
        cost += [(f"CPU µs/req c{c}", f"cpu_us_req_c{c}", 2), ("×HAProxy", f"cpu_us_req_c{c}", "haproxy")]
    cost += [(f"syscalls/req c{c}", f"syscalls_req_c{c}", 2) for c in conns]
    cost += [("bulk MB/s", "bulk_MBps", 0), ("×direct", "bulk_MBps", "direct"),
             ("CPU s/GiB", "bulk_cpu_s_GiB", 3), ("×HAProxy", "bulk_cpu_s_GiB", "haproxy"),
             ("RSS KiB/conn", "rss_KiB_conn", 2), (f"RSS MiB, {mem_conns:,} conns", "rss_MiB_held", 1)]
    return perf, cost


def render_md(res: dict) -> str:
    meta, cfg, summ = res["machine"], res["config"], res["summary"]
    targets = cfg["targets"]

    def cell(t: str, metric: str, what) -> str:
        e = summ.get(t, {}).get(metric)
        if not e:
            return "–"
        if isinstance(what, int):
            return fmt(e["median"], what)
        if t == "direct" and what == "haproxy" and "rps" not in metric:
            return "–"  # the backend's cost is not comparable with a proxy's
        return f"{e[f'vs_{what}']:.2f}×" if f"vs_{what}" in e else "–"

    def table(cols: list, extra: dict | None = None, rows_for: list[str] | None = None) -> list[str]:
        head = ["target"] + [h for h, _, _ in cols] + (list(extra) if extra else [])
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t in rows_for or targets:
            cells = [("direct*" if t == "direct" else t)] + [cell(t, m, w) for _, m, w in cols]
            cells += [str(f(t)) for f in (extra or {}).values()]
            rows.append("| " + " | ".join(cells) + " |")
        return rows

    body = "4096-byte" if cfg["body"] == "4k" else f"{cfg['body']}-byte"
    L = [f"# uproxy side-by-side benchmark ({cfg['mode']})", "",
         f"- when: {meta['date_utc']} UTC, {res['elapsed_s']:.0f} s; load average at start "
         f"{' '.join(meta['loadavg_at_start'])}",
         f"- machine: kernel {meta['kernel']}, {meta['nproc']} CPUs ({meta['cpu']})",
         f"- uproxy: commit {meta['uproxy_commit']}"
         f"{' + uncommitted changes to src/, include/ or meson.build' if meta['uproxy_uncommitted_changes'] else ''}"
         f" ({meta['uproxy_buildtype']} build), "
         f"`{' '.join(['--log-level warn', cfg['uproxy_args']]).strip()}`"
         + ("; uproxy-epoll: the same with `--backend epoll` (what runs where io_uring is blocked, "
            "e.g. by a container's default seccomp profile)" if "uproxy-epoll" in targets else ""),
         f"- others: {meta['haproxy']}; {meta['nginx']}; {meta['wrk']}",
         "- method: " + "; ".join(
             [f"{cfg['reps']} interleaved repetitions, medians", f"wrk -t1, {cfg['duration']} s runs, {body} body"]
             + ([] if "syscalls" in cfg["skip"] else
                [f"syscalls counted with {cfg['syscall_method']} over separate {cfg['syscall_duration']} s runs"])
             + ([] if "memory" in cfg["skip"] else
                [f"memory {cfg['mem_reps']}× with fresh instances, {cfg['mem_conns']:,} connections"])
             + [f"pinning: {cfg['pin_desc']}"]
             + ([f"skipped: {', '.join(cfg['skip'])}"] if cfg["skip"] else [])),
         ]
    other = res.get("other_load_cores")
    if other:
        L.append(f"- other work on the machine during the timed runs: {other['median']:.2f} cores "
                 f"(median; max {other['max']:.2f})")
        if other["median"] > BUSY_WARN:
            L += ["", f"**Warning: the machine was busy with other work ({other['median']:.2f} of "
                  f"{meta['nproc']} cores); req/s and p99 are not trustworthy in this run, CPU/req "
                  "and syscalls/req less affected.**"]
    def spread(cols: list, rows_for: list[str] | None = None) -> list[str]:
        seen, spread_cols = set(), []
        for h, m, w in cols:
            if isinstance(w, int) and m not in seen:
                seen.add(m)
                spread_cols.append((h, m, w))
        head = ["target"] + [h for h, _, _ in spread_cols]
        rows = ["Spread (min–max over the repetitions):", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t in rows_for or targets:
            cells = []
            for _, m, d in spread_cols:
                e = summ.get(t, {}).get(m)
                cells.append(f"{fmt(e['min'], d)}–{fmt(e['max'], d)}" if e else "–")
            rows.append(f"| {'direct*' if t == 'direct' else t} | " + " | ".join(cells) + " |")
        return rows

    L += ["", f"## {LAYOUT_TITLES['shared']}: {cfg['pin_desc']}", ""]
    perf, cost = table_columns(cfg["conns"], cfg["mem_conns"])
    L += table(perf, {"wrk errors": lambda t: res["errors"].get(t, 0)})
    L.append("")
    L += table(cost)
    L += ["",
          "\\* direct: wrk straight at the backend nginx; its CPU, syscall, bulk and memory figures are the "
          "backend's own, shown as context. For a proxy they are the proxy process's (all threads; nginx: "
          "master + worker). Ratios are medians of the per-repetition ratios. CPU/req and syscalls/req are "
          "the figures to steer by; req/s and p99 move with whatever else the machine is doing. "
          "Memory runs unpinned, on fresh instances.", ""]
    L += spread(perf + cost)

    if cfg.get("alone"):
        L += ["", f"## {LAYOUT_TITLES['alone']}: {cfg['alone_desc']}", ""]
        other = res.get("other_load_cores_alone")
        if other:
            L += [f"Other work on the machine during these runs: {other['median']:.2f} cores "
                  f"(median; max {other['max']:.2f}).", ""]
        perf, cost = alone_columns(cfg["alone_conns"])
        L += table(perf)
        L.append("")
        L += table(cost)
        L += ["",
              "Separate instances of every server, pinned this way; "
              f"wrk -t1, {cfg['alone_duration']} s runs, same body. "
              "direct\\*: wrk and the backend alone on their CPU, no proxy (its CPU, syscall and context-switch "
              "figures are the backend's). CPU µs/req and ctx sw/req (voluntary + involuntary, every thread, "
              "/proc/PID/task/*/status) come from the timed run; syscalls/req and io_uring_enter/req from "
              f"separate {cfg['syscall_method']} runs.", ""]
        L += spread(perf) + [""] + spread(cost)[2:]

    slow_targets = [t for t in targets if t != "direct"]
    if "slow" not in cfg["skip"] and slow_targets:
        L += ["", f"## Slow readers: {cfg['slow_conns']:,} held, {cfg['slow_fresh']} fresh requests", "",
              f"Each slow reader (SO_RCVBUF {cfg['slow_rcvbuf']}, MSS {SLOW_MSS}) asks for "
              f"{cfg['slow_size'] >> 10} KiB and never "
              f"reads; while they are held, fresh clients one after another GET {cfg['slow_path']} "
              f"({len(BODY4K)} bytes) on a new connection each; failed = error or over {cfg['slow_timeout_s']:.0f} s. "
              f"Fresh proxy and backend for each round, pinned as in the shared-core layout; "
              f"{cfg['slow_reps']} round(s), medians.", ""]
        L += table(SLOW_COLUMNS, rows_for=slow_targets)
        L += ["", "RSS MiB held: the proxy's VmRSS (all processes) while the readers are held; KiB/reader: its "
              "growth from before they connected ÷ readers. socket MiB: kernel memory of every socket of the "
              "round (readers, proxy, backend; `ss -tm`) while held.", ""]
        if cfg["slow_reps"] > 1:
            L += spread(SLOW_COLUMNS, slow_targets)
    if res["problems"]:
        L += ["", "## Problems", ""]
        L += [f"- {p}" for p in res["problems"]]
    L += ["", "Raw samples, medians and ratios: latest.json. Chart: latest.png."]
    return "\n".join(L) + "\n"


def write_chart(res: dict, outdir: Path) -> Path | None:
    summ, cfg = res["summary"], res["config"]
    targets = cfg["targets"]
    rows = [(f"req/s vs direct c{c}", f"rps_c{c}", "direct") for c in cfg["conns"]]
    rows += [(f"CPU/req vs HAProxy c{c}", f"cpu_us_req_c{c}", "haproxy") for c in cfg["conns"]]
    dat = outdir / "latest.dat"
    lines = ["metric " + " ".join(targets)]
    for label, m, ref in rows:
        vals = []
        for t in targets:
            e = summ.get(t, {}).get(m)
            ok = e and f"vs_{ref}" in e and not (t == "direct" and m.startswith("cpu"))
            vals.append(f"{e[f'vs_{ref}']:.4f}" if ok else "NaN")
        lines.append(f'"{label}" ' + " ".join(vals))
    dat.write_text("\n".join(lines) + "\n")
    png = outdir / "latest.png"
    title = f"uproxy {res['machine']['uproxy_describe']} ({cfg['mode']}, {res['machine']['date_utc']} UTC)"
    cp = subprocess.run(["gnuplot", "-e", f"datafile='{dat}'; outfile='{png}'; ntargets={len(targets)}; nrows={len(rows)}; "
                         f"charttitle='{title}'", str(BENCH / "chart.gp")],
                        capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        log(f"warning: gnuplot failed: {cp.stderr.strip()}")
        return None
    return png


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repetitions of short runs (about 2 minutes)")
    p.add_argument("--out", default=str(BENCH / "results"), help="output directory (default bench/results)")
    p.add_argument("--targets", default=None,
                   help=f"comma-separated, in row order (default {','.join(ALL_TARGETS)}; uproxy-epoll is "
                        "left out, with a warning, when the binary has no --backend option)")
    p.add_argument("--uproxy-args", default="", help='extra uproxy arguments, e.g. "--workers 2" (one word needs the = form: --uproxy-args=--workers=2)')
    p.add_argument("--uproxy-bin", default=None, help="uproxy binary to run (default build-bench/uproxy, built by bench.sh)")
    p.add_argument("--pin", choices=("split", "none"), default="split",
                   help="split: wrk/curl on the last CPU, servers on the others (default); none: no pinning")
    p.add_argument("--reps", type=int, help="repetitions (default 3 quick, 5 full)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 2 quick, 10 full)")
    p.add_argument("--alone-duration", type=int,
                   help="seconds per wrk run of the dedicated-core layout (default 2 quick, 5 full)")
    p.add_argument("--syscall-duration", type=int, help="seconds per syscall-counting run (default 1)")
    p.add_argument("--syscall-method", choices=("auto", "perf", "strace"), default="auto",
                   help="how to count system calls (default auto: perf when it can count, else strace)")
    p.add_argument("--mem-reps", type=int, help="repetitions of the memory figure (default 3)")
    p.add_argument("--mem-conns", type=int, default=5000, help="idle connections for the memory figure (default 5000)")
    p.add_argument("--conns", default="50,400", help="wrk connection counts (default 50,400)")
    p.add_argument("--alone-conns", default="1,50,400",
                   help="wrk connection counts of the dedicated-core layout (default 1,50,400)")
    p.add_argument("--slow-reps", type=int, help="repetitions of the slow-readers figure (default 1 quick, 3 full)")
    p.add_argument("--slow-conns", type=int, default=3000, help="slow readers held (default 3000)")
    p.add_argument("--slow-size", type=int, default=SLOW_SIZE,
                   help=f"bytes each slow reader asks for (default {SLOW_SIZE}; at most the big file)")
    p.add_argument("--slow-fresh", type=int,
                   help="fresh requests, one after another, while they are held (default 50 quick, 200 full)")
    p.add_argument("--body", choices=tuple(BODIES), default="64", help="response body for wrk (default 64)")
    p.add_argument("--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, logs)")
    args = p.parse_args(argv)

    args.mode = "quick" if args.quick else "full"
    for k, v in MODES[args.mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.targets_given = args.targets is not None
    args.targets = [t.strip() for t in (args.targets or ",".join(ALL_TARGETS)).split(",") if t.strip()]
    bad = [t for t in args.targets if t not in ALL_TARGETS]
    if bad or not args.targets or len(set(args.targets)) != len(args.targets):
        p.error(f"--targets: each of {','.join(ALL_TARGETS)} at most once (got {bad or args.targets})")
    args.conns = [int(c) for c in args.conns.split(",")]
    args.alone_conns = [int(c) for c in args.alone_conns.split(",")]
    args.slow_size = min(args.slow_size, BIG_SIZE)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(PHASES):
        p.error(f"--skip: unknown phase(s) {sorted(args.skip - set(PHASES))}")
    if min(args.reps, args.duration, args.alone_duration, args.syscall_duration, args.mem_reps, args.mem_conns,
           args.slow_reps, args.slow_conns, args.slow_fresh, args.slow_size, *args.conns, *args.alone_conns) < 1:
        p.error("counts and durations must be at least 1")
    args.uproxy_bin = Path(args.uproxy_bin or ROOT / "build-bench" / "uproxy").resolve()
    args.out = Path(args.out)
    return args


def setup_pinning(args) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin == "split" and len(cpus) >= 2:
        args.client_cpus, args.server_cpus = {cpus[-1]}, set(cpus[:-1])
        args.pin_desc = (f"wrk and curl on CPU {cpus[-1]}, backend and proxies on CPU "
                         f"{','.join(map(str, cpus[:-1]))}")
    else:
        args.client_cpus = args.server_cpus = None
        args.pin_desc = "none" + (" (only one CPU)" if args.pin == "split" else "")
    # The dedicated-core layout pins whatever --pin says: the proxy alone on the last CPU, the
    # backend and wrk on the others.
    args.alone_cpus, args.alone_desc = None, "skipped"
    if "alone" in args.skip:
        pass
    elif len(cpus) >= 2:
        args.alone_cpus = ({cpus[-1]}, set(cpus[:-1]))
        args.alone_desc = (f"proxy alone on CPU {cpus[-1]}, wrk and backend on CPU "
                           f"{','.join(map(str, cpus[:-1]))}")
    else:
        args.alone_desc = "skipped: needs 2 CPUs"


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_big_file(path: Path) -> None:
    """256 MiB of real (random) data; sent through every proxy by the bulk figure."""
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE >> 20):
            f.write(os.urandom(1 << 20))
    path.chmod(0o644)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "nginx", "curl", "gnuplot") + (("haproxy",) if "haproxy" in args.targets else ()):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found: run scripts/setup.sh --bench")
    if set(UPROXY_TARGETS) & set(args.targets) and not os.access(args.uproxy_bin, os.X_OK):
        raise BenchError(f"{args.uproxy_bin} not found: build it (scripts/bench.sh does)")
    if "uproxy-epoll" in args.targets and not binary_has_backend_option(args.uproxy_bin):
        msg = (f"{args.uproxy_bin} has no --backend option (no epoll backend): "
               "the uproxy-epoll row needs it; --uproxy-bin a binary that has it")
        if args.targets_given:
            raise BenchError(msg)
        log(f"warning: {msg}; running without that row")
        args.targets.remove("uproxy-epoll")
    raise_nofile()
    setup_pinning(args)
    if "syscalls" in args.skip:
        args.syscall_method = "skipped"
    elif args.syscall_method == "auto":
        args.syscall_method = syscall_method()
    args.out.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="uproxy-bench."))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user and read www/
    problems: list[str] = []
    samples: list[dict] = []
    errors: dict[str, int] = {}
    b = None
    try:
        meta = machine_info(args)
        log(f"{args.mode} run: targets {','.join(args.targets)}, {args.reps} reps, {args.duration} s wrk runs, "
            f"pinning {args.pin_desc}, syscalls via {args.syscall_method}; temp dir {tmp}")
        if set(UPROXY_TARGETS) & set(args.targets):
            # Run a private copy, so a rebuild by someone else during the run changes nothing.
            args.uproxy_copy = tmp / "uproxy"
            shutil.copy2(args.uproxy_bin, args.uproxy_copy)
        (tmp / "www").mkdir(mode=0o755)
        make_big_file(tmp / "www" / BIG_PATH.lstrip("/"))
        (tmp / "www" / "4k").write_text(BODY4K)
        (tmp / "www" / "4k").chmod(0o644)
        b = Bench(args, tmp)
        b.start_all()

        dead: set[tuple[str, str]] = set()  # (layout, target)

        def record(rep: int, target: str, kind: str, fn, *a, lay: Layout | None = None, **extra) -> None:
            """Run one measurement, keep its sample, log it; note errors and a server's death."""
            lay = lay or b.shared
            if (lay.name, target) in dead:
                return
            srv = lay.instances[target]
            sample = {"rep": rep, "target": target, "kind": kind, **extra}
            try:
                sample.update(fn(b, target, *a, **({"lay": lay} if lay is not b.shared else {})))
                sample["ok"] = True
                log(describe(sample))
                if sample.get("error_total"):
                    errors[target] = errors.get(target, 0) + sample["error_total"]
                    problems.append(f"{target} rep {rep} {kind} c{extra.get('conns')}: wrk errors {sample['errors']}")
            except (BenchError, subprocess.SubprocessError, OSError) as e:
                sample.update(ok=False, error=str(e))
                problems.append(f"{target} rep {rep} {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                log(f"  ERROR {target} {kind}: {e}")
            samples.append(sample)
            if not srv.alive():
                dead.add((lay.name, target))
                rc = srv.popen.returncode
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                problems.append(f"{target} ({srv.name}, pid {srv.pid}, {lay.name} layout) {how} "
                                f"during rep {rep} {kind}; "
                                f"no further runs for it. Log tail:\n\n```\n{srv.log_tail()}\n```")
                log(f"  {target} {how}; log tail:\n{srv.log_tail()}")

        for rep in range(1, args.reps + 1):
            for t in args.targets:
                if "load" not in args.skip:
                    for c in args.conns:
                        record(rep, t, "load", measure_load, c, conns=c)
                if "syscalls" not in args.skip:
                    for c in args.conns:
                        record(rep, t, "syscalls", measure_syscalls, c, conns=c)
                if "bulk" not in args.skip:
                    record(rep, t, "bulk", measure_bulk)
            if b.alone:
                for t in args.targets:
                    for c in args.alone_conns:
                        record(rep, t, "alone", measure_load, c, lay=b.alone, conns=c)
                    if "syscalls" not in args.skip:
                        for c in args.alone_conns:
                            record(rep, t, "alone_syscalls", measure_syscalls, c, lay=b.alone, conns=c)
        if "slow" not in args.skip:
            for rep in range(1, args.slow_reps + 1):
                for t in args.targets:
                    if t == "direct":
                        continue  # the backend alone: the same nginx behind every proxy
                    s = slow_round(b, rep, t)
                    samples.append(s)
                    if s["ok"]:
                        log(describe(s))
                    else:
                        problems.append(f"{t} rep {rep} slow readers: {s['error'].splitlines()[0]}")
                        log(f"  ERROR {t} slow readers: {s['error']}")
                    if s.get("fresh_failed"):
                        problems.append(f"{t} rep {rep} slow readers: {s['fresh_failed']} of {s['fresh']} fresh "
                                        f"requests failed: {'; '.join(s['fresh_errors'])}")
        if "memory" not in args.skip:
            for rep in range(1, args.mem_reps + 1):
                try:
                    round_samples = memory_round(b, rep)
                except (BenchError, subprocess.SubprocessError, OSError) as e:
                    round_samples = [{"rep": rep, "target": t, "kind": "memory", "ok": False, "error": str(e)}
                                     for t in args.targets]
                for s in round_samples:
                    samples.append(s)
                    if s["ok"]:
                        log(describe(s))
                    else:
                        problems.append(f"{s['target']} rep {rep} memory: {s['error'].splitlines()[0]}")
                        log(f"  ERROR {s['target']} memory: {s['error']}")

        # Anything the servers said (uproxy logs at warn and above only).
        logs = {}
        for lay in (b.shared, b.alone):
            for t in (args.targets if lay else []):
                srv = lay.instances[t]
                key = t if lay is b.shared else f"{t} ({lay.name})"
                text = srv.logfile.read_text(errors="replace") if srv.logfile.exists() else ""
                logs[key] = text[-4000:]
                if t in UPROXY_TARGETS and text.strip():
                    problems.append(f"{key} wrote {len(text.splitlines())} log line(s) at warn or above; last:\n\n"
                                    f"```\n{srv.log_tail(10)}\n```")
    except BaseException:
        stop_all()
        # Keep the configs and logs for a post-mortem, not the 256 MiB file.
        (tmp / "www" / BIG_PATH.lstrip("/")).unlink(missing_ok=True)
        log(f"kept {tmp} (configs and logs)")
        raise
    stop_all()

    res = {
        "machine": meta,
        "config": {"mode": args.mode, "targets": args.targets, "reps": args.reps, "duration": args.duration,
                   "syscall_duration": args.syscall_duration, "syscall_method": args.syscall_method,
                   "mem_reps": args.mem_reps, "mem_conns": args.mem_conns, "conns": args.conns,
                   "body": args.body, "pin": args.pin, "pin_desc": args.pin_desc, "uproxy_args": args.uproxy_args,
                   "alone": bool(b and b.alone), "alone_conns": args.alone_conns, "alone_desc": args.alone_desc,
                   "alone_duration": args.alone_duration,
                   "slow_reps": args.slow_reps, "slow_conns": args.slow_conns, "slow_fresh": args.slow_fresh,
                   "slow_rcvbuf": SLOW_RCVBUF, "slow_mss": SLOW_MSS, "slow_size": args.slow_size,
                   "slow_path": SLOW_PATH,
                   "slow_timeout_s": SLOW_TIMEOUT, "perf_events": PERF_EVENTS,
                   "skip": sorted(args.skip), "ports": b.ports if b else {},
                   "commands": {t: b.instances[t].argv for t in args.targets} if b else {}},
        "summary": summarise(samples, args.targets),
        "errors": errors,
        "problems": problems,
        "samples": samples,
        "server_logs": logs,
        "elapsed_s": time.monotonic() - T0,
    }
    for kind, key in (("load", "other_load_cores"), ("alone", "other_load_cores_alone")):
        other = [x["other_load_cores"] for x in samples if x.get("ok") and x["kind"] == kind]
        if other:
            res[key] = {"median": statistics.median(other), "max": max(other)}
    md = render_md(res)
    (args.out / "latest.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "latest.md").write_text(md)
    hist = args.out / "history"
    hist.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    shutil.copy2(args.out / "latest.json", hist / f"{stamp}-{args.mode}.json")
    shutil.copy2(args.out / "latest.md", hist / f"{stamp}-{args.mode}.md")
    png = write_chart(res, args.out)
    if args.keep_tmp:
        (tmp / "www" / BIG_PATH.lstrip("/")).unlink(missing_ok=True)
        log(f"kept {tmp} (configs and logs)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(md)
    log(f"wrote {args.out}/latest.md, latest.json" + (", latest.png" if png else "") + f" in {res['elapsed_s']:.0f} s")
    return 1 if dead else 0


def describe(s: dict) -> str:
    """One progress line for a sample."""
    head = f"rep {s['rep']} {s['target']:8}" + (" alone" if s["kind"].startswith("alone") else "")
    if s["kind"] in ("load", "alone"):
        return (f"{head} c{s['conns']:<4} {s['rps']:9,.0f} req/s  p50 {s['p50_ms']:6.3f} p99 {s['p99_ms']:6.2f} ms  "
                f"cpu {s['cpu_us_req']:5.2f} µs/req  (backend {s['backend_cpu_us_req']:5.2f})  "
                f"{s['ctxsw_req']:.2f} ctxsw/req  other load {s['other_load_cores']:.2f} cores"
                + (f"  ERRORS {s['errors']}" if s["error_total"] else ""))
    if s["kind"] in ("syscalls", "alone_syscalls"):
        return (f"{head} c{s['conns']:<4} {s['syscalls_req']:6.2f} syscalls/req"
                + (f"  {s['enters_req']:6.2f} io_uring_enter/req" if "enters_req" in s else "")
                + (f"  {s['perf_ctxsw_req']:6.2f} ctxsw/req (perf)" if "perf_ctxsw_req" in s else ""))
    if s["kind"] == "slow":
        lat = (f"p50 {s['fresh_p50_ms']:.2f} ms max {s['fresh_max_ms']:.1f} ms" if s["fresh_ok"] else "no answer")
        return (f"{head} slow readers: {s['slow_with_data']}/{s['slow_conns']} held with data, RSS "
                f"{s['rss_before_kib'] / 1024:.1f} -> {s['rss_held_kib'] / 1024:.1f} MiB, {s['sockets']} sockets "
                f"{s['socket_mem_MiB']:.0f} MiB; "
                f"fresh {s['fresh_ok']}/{s['fresh']} ok, {lat}; phases {s['phases_s']}")
    if s["kind"] == "bulk":
        return f"{head} bulk {s['MBps']:8.0f} MB/s  {s['cpu_s_GiB']:.3f} CPU s/GiB"
    return (f"{head} {s['rss_KiB_conn']:6.2f} KiB/conn ({s['rss_before_kib']} -> {s['rss_after_kib']} KiB, "
            f"{s['conns']} connections opened in {s['open_s']:.1f} s)")


def on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # Also SIGINT: a shell without job control starts background commands with SIGINT ignored.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        stop_all()
        print("bench: interrupted; stopped everything it started", file=sys.stderr)
        sys.exit(130)
    except BenchError as e:
        stop_all()
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        stop_all()
