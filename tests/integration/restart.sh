#!/bin/bash
# Zero-downtime restart (README "Signals and restarts"): with
# net.ipv4.tcp_migrate_req=1, a second uproxy starts on the same port
# (SO_REUSEPORT), the first gets SIGTERM, and clients making a new
# connection every ~5 ms throughout see no connection refused, reset or
# failed. Both proxies must exit 0.
#
# Twice: (1) as is; (2) with ~100 connections waiting in the old proxy's
# accept queue when its listener closes (it is kept from accepting by
# --max-conns 1 and a session held open on it): the connections only
# tcp_migrate_req saves. (1) alone passes even without the sysctl, since
# uproxy accepts at once and its queue is nearly always empty; (2) fails
# without it.
#
# Runs in a private network namespace (unshare --net, as root), so the
# sysctl and the ports touch nothing on the host. If no namespace can be
# made, the test fails: it does not skip.
#
# Environment: UPROXY_BIN, the binary under test.
set -u

fail() {
	echo "restart.sh: FAIL: $*" >&2
	exit 1
}

[ -n "${UPROXY_BIN:-}" ] || fail "UPROXY_BIN is not set"
[ -x "$UPROXY_BIN" ] || fail "no executable uproxy at '$UPROXY_BIN'"
UPROXY_BIN=$(readlink -f "$UPROXY_BIN")

if [ -z "${UPROXY_RESTART_OUTER_NETNS:-}" ]; then
	command -v unshare >/dev/null || fail "unshare(1) not found: cannot make a private network namespace"
	if ! err=$(unshare --net true 2>&1); then
		fail "cannot create a private network namespace (unshare --net: ${err:-no message});" \
			"this test needs root or CAP_SYS_ADMIN and must not run on the host's network"
	fi
	UPROXY_RESTART_OUTER_NETNS=$(readlink /proc/self/ns/net) || fail "cannot read /proc/self/ns/net"
	export UPROXY_RESTART_OUTER_NETNS
	exec unshare --net "$0" "$@"
fi

# ---- inside the namespace -------------------------------------------------
# never touch a network that is not ours: a namespace other than the one we
# were started in, freshly made (nothing but lo)
here=$(readlink /proc/self/ns/net) || fail "cannot read /proc/self/ns/net"
[ "$here" != "$UPROXY_RESTART_OUTER_NETNS" ] ||
	fail "not in a private network namespace: refusing to touch the host's network"
links=$(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
[ "$links" = "lo " ] ||
	fail "the network namespace is not a fresh one (links: $links): refusing to touch it"
ip link set lo up || fail "cannot bring lo up in the namespace"
sysctl -q -w net.ipv4.tcp_migrate_req=1 || fail "cannot set net.ipv4.tcp_migrate_req=1"
[ "$(cat /proc/sys/net/ipv4/tcp_migrate_req)" = 1 ] || fail "tcp_migrate_req is not 1"
command -v python3 >/dev/null || fail "python3 not found"
command -v ss >/dev/null || fail "ss (iproute2) not found"

exec python3 - "$UPROXY_BIN" <<'PY'
import errno, multiprocessing as mp, os, queue, selectors, signal, socket, subprocess, sys, time

UPROXY = sys.argv[1]
BACKEND_PORT = 18081
children = []          # everything to kill if the test fails


def fail(msg):
    sys.stderr.write("restart.sh: FAIL: %s\n" % msg)
    sys.stderr.flush()
    for c in children:
        if isinstance(c, subprocess.Popen):
            if c.poll() is None:
                c.kill()
                c.wait()
        elif c.is_alive():
            c.kill()
            c.join()
    os._exit(1)


def echo_server(port):
    """Single-threaded echo server (its own process)."""
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select(timeout=1):
            if key.fileobj is ls:
                while True:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                continue
            c = key.fileobj
            try:
                d = c.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if d:
                try:
                    c.sendall(d)    # 32-byte messages: never blocks
                    continue
                except OSError:
                    pass
            sel.unregister(c)
            c.close()


def listen_queues(port):
    """Accept-queue lengths (Recv-Q) of the sockets listening on port, from
    ss (inet_diag): reading /proc/net/tcp can take seconds on a busy host,
    whose connection table every namespace shares."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True,
                         text=True, timeout=10)
    if out.returncode != 0:
        fail("ss failed: %s" % out.stderr)
    return [int(line.split()[1]) for line in out.stdout.splitlines() if line.strip()]


def start_proxy(name, port, extra, want_listeners):
    # UPROXY_TEST_BACKEND=epoll: the suite's second pass runs every proxy on epoll.
    backend = os.environ.get("UPROXY_TEST_BACKEND")
    extra = (["--backend", backend] if backend else []) + extra
    p = subprocess.Popen([UPROXY, "--listen", "127.0.0.1:%d" % port,
                          "--upstream", "127.0.0.1:%d" % BACKEND_PORT,
                          "--log-level", "warn"] + extra,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children.append(p)
    deadline = time.monotonic() + 3
    while len(listen_queues(port)) < want_listeners:
        if p.poll() is not None:
            fail("proxy %s exited %s at start-up: %s" % (name, p.returncode, p.stderr.read().decode()))
        if time.monotonic() > deadline:
            fail("proxy %s not listening on port %d within 3 s" % (name, port))
        time.sleep(0.01)
    return p


def stop_proxy(name, p, within):
    """SIGTERM; returns (exit status, ms to exit, stderr)."""
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=within)
    except subprocess.TimeoutExpired:
        fail("proxy %s still running %.0f s after SIGTERM" % (name, within))
    return rc, (time.monotonic() - t) * 1000, p.stderr.read().decode()


def echo_once(s, n=32):
    msg = os.urandom(n)
    s.sendall(msg)
    got = b""
    while len(got) < n:
        d = s.recv(n - len(got))
        if not d:
            raise ConnectionError("EOF after %d of %d echo bytes" % (len(got), n))
        got += d
    if got != msg:
        raise ConnectionError("echo differs")


def client(idx, port, t0, end, interval, timeout, out):
    """Starts a new connection every interval s until t0 + end, each one a
    32-byte echo; connections run side by side (one slow to be served does
    not hold back the next)."""
    sel = selectors.DefaultSelector()
    oks, problems, conns = [], [], {}
    n, next_at = 0, t0

    def finish(s, what):
        st = conns.pop(s)
        sel.unregister(s)
        s.close()
        if what is None:
            oks.append(time.monotonic() - t0)
        else:
            problems.append("client %d, connection %d started at %.3f s: %s"
                            % (idx, st["n"], st["t"] - t0, what))

    while time.monotonic() < t0:
        time.sleep(0.001)
    while True:
        now = time.monotonic()
        if now - t0 >= end and not conns:
            break
        if now - t0 < end and now >= next_at:
            n += 1
            next_at = max(next_at + interval, now)
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            st = {"n": n, "t": now, "msg": os.urandom(32), "got": b"", "sent": False}
            conns[s] = st
            sel.register(s, selectors.EVENT_WRITE, st)
            if err not in (0, errno.EINPROGRESS):
                finish(s, os.strerror(err))
        for key, _ in sel.select(max(0.0, min(next_at - time.monotonic(), 0.01))):
            s, st = key.fileobj, key.data
            if s not in conns:
                continue
            if not st["sent"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(s, os.strerror(err))
                    continue
                try:
                    s.send(st["msg"])          # 32 bytes: all or an error
                except OSError as e:
                    finish(s, "send: %s" % e.strerror)
                    continue
                st["sent"] = True
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                d = s.recv(32 - len(st["got"]))
            except BlockingIOError:
                continue
            except OSError as e:
                finish(s, e.strerror)
                continue
            if not d:
                finish(s, "EOF after %d of 32 echo bytes" % len(st["got"]))
                continue
            st["got"] += d
            if len(st["got"]) == 32:
                finish(s, None if st["got"] == st["msg"] else "echo differs")
        now = time.monotonic()
        for s, st in list(conns.items()):
            if now - st["t"] > timeout:
                finish(s, "no echo within %.1f s (%s)"
                       % (timeout, "connected" if st["sent"] else "connecting"))
    out.put((oks, problems))


def run_clients(n, port, t0, end, interval, timeout):
    q = mp.Queue()
    ps = [mp.Process(target=client, args=(k, port, t0, end, interval, timeout, q))
          for k in range(n)]
    for p in ps:
        children.append(p)
        p.start()
    return q, ps


def collect(q, ps, n, within):
    oks, problems = [], []
    for _ in range(n):
        try:
            o, pr = q.get(timeout=within)
        except queue.Empty:
            fail("a client process did not report within %.0f s" % within)
        oks += o
        problems += pr
    for p in ps:
        p.join(timeout=5)
    return oks, problems


def until(t):
    while time.monotonic() < t:
        time.sleep(0.002)


mp.set_start_method("fork")
be = mp.Process(target=echo_server, args=(BACKEND_PORT,), daemon=True)
children.append(be)
be.start()
deadline = time.monotonic() + 3
while not listen_queues(BACKEND_PORT):
    if time.monotonic() > deadline:
        fail("the echo backend did not start")
    time.sleep(0.01)

# ---- 1: a new connection every ~5 ms (from each of 2 clients) for 3 s; B
# starts at 1 s, A gets SIGTERM at 1.5 s
PORT = 18080
a = start_proxy("A", PORT, [], 1)
t0 = time.monotonic() + 0.05
q, ps = run_clients(2, PORT, t0, 3.0, 0.005, 2.0)
until(t0 + 1.0)
b = start_proxy("B", PORT, [], 2)
until(t0 + 1.5)
a_rc, a_ms, a_err = stop_proxy("A", a, 5)
t_gone = time.monotonic() - t0
oks, problems = collect(q, ps, 2, 10)
b_rc, _, b_err = stop_proxy("B", b, 5)
after = sum(1 for t in oks if t > t_gone)
print("restart: %d connections ok (%d after A exited, %.0f ms after its SIGTERM), %d failed"
      % (len(oks), after, a_ms, len(problems)))
if problems:
    fail("%d of %d connections failed across the restart; first ones:\n  %s"
         % (len(problems), len(oks) + len(problems), "\n  ".join(problems[:10])))
if a_rc != 0:
    fail("proxy A exited %d after SIGTERM, want 0; stderr:\n%s" % (a_rc, a_err))
if b_rc != 0:
    fail("proxy B exited %d after SIGTERM, want 0; stderr:\n%s" % (b_rc, b_err))
if len(oks) < 200:
    fail("only %d connections in 3 s: the client loop did not exercise the restart" % len(oks))
if after < 50:
    fail("only %d connections served after A exited: B did not take over" % after)

# ---- 2: the same with connections waiting in A's accept queue when its
# listener closes -- the ones tcp_migrate_req hands over to B. A is kept from
# accepting by --max-conns 1 and one session held open on it; after SIGTERM
# that session is still served (drain), then ends.
PORT = 18090
a = start_proxy("A", PORT, ["--max-conns", "1"], 1)
hold = socket.create_connection(("127.0.0.1", PORT), timeout=2)
hold.settimeout(2)
try:
    echo_once(hold)
except OSError as e:
    fail("the held session on A does not echo: %s" % e)
b = start_proxy("B", PORT, [], 2)
t0 = time.monotonic() + 0.05
q, ps = run_clients(2, PORT, t0, 1.0, 0.005, 3.0)
until(t0 + 0.5)
queued = listen_queues(PORT)
t_term = time.monotonic()
a.send_signal(signal.SIGTERM)
time.sleep(0.1)
try:
    echo_once(hold)
except OSError as e:
    fail("A's session stopped working right after SIGTERM (it should drain): %s" % e)
hold.close()
try:
    a_rc = a.wait(timeout=5)
except subprocess.TimeoutExpired:
    fail("proxy A still running 5 s after SIGTERM (and its last session closed)")
a_ms = (time.monotonic() - t_term) * 1000
a_err = a.stderr.read().decode()
oks, problems = collect(q, ps, 2, 10)
b_rc, _, b_err = stop_proxy("B", b, 5)
print("restart with A's queue full: %d connections waiting in the accept queues %s at "
      "SIGTERM; %d ok, %d failed; A exited after %.0f ms"
      % (sum(queued), queued, len(oks), len(problems), a_ms))
if sum(queued) < 5:
    fail("only %d connections were waiting in A's accept queue at SIGTERM: the set-up did "
         "not work (queues %s)" % (sum(queued), queued))
if problems:
    fail("%d of %d connections failed when A's listener closed with %d connections queued; "
         "first ones:\n  %s" % (len(problems), len(oks) + len(problems), sum(queued),
                                "\n  ".join(problems[:10])))
if a_rc != 0:
    fail("proxy A exited %d after SIGTERM, want 0; stderr:\n%s" % (a_rc, a_err))
if b_rc != 0:
    fail("proxy B exited %d after SIGTERM, want 0; stderr:\n%s" % (b_rc, b_err))
print("restart.sh: PASS")
PY
