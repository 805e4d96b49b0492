#!/usr/bin/env python3
"""Hold N idle keep-alive HTTP connections open, for the memory figure of bench/bench.py.

    python3 bench/holdconns.py PORT N

Opens N connections to 127.0.0.1:PORT, sends one `GET /64` on each and reads the response (so each
connection went all the way through the proxy to the backend and back), prints `ready SECONDS`,
then holds them until stdin is closed, and closes them (FIN). Prints `error: ...` and exits 1 if
anything fails or takes longer than 60 s. Runs as its own process so that each target's client
has its own open-file limit.
"""

import re
import resource
import socket
import sys
import time

REQUEST = b"GET /64 HTTP/1.1\r\nHost: bench\r\n\r\n"
BUDGET = 60.0
BATCH = 500


def read_response(s: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response headers")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or not m:
        raise RuntimeError(f"unexpected response: {head[:200]!r}")
    need = int(m.group(1)) - len(body)
    while need > 0:
        chunk = s.recv(need)
        if not chunk:
            raise RuntimeError("connection closed in the response body")
        need -= len(chunk)


def main() -> int:
    port, n = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    start = time.monotonic()
    try:
        # In batches: connect and send on BATCH connections, then read their responses.
        for first in range(0, n, BATCH):
            group = []
            for _ in range(min(BATCH, n - first)):
                s = socket.socket()
                socks.append(s)
                s.settimeout(5)
                s.connect(("127.0.0.1", port))
                s.sendall(REQUEST)
                group.append(s)
            for s in group:
                read_response(s)
            if time.monotonic() - start > BUDGET:
                raise RuntimeError(f"opening {n} connections took over {BUDGET:.0f} s")
        print(f"ready {time.monotonic() - start:.3f}", flush=True)
        sys.stdin.read()  # until bench.py closes our stdin
        return 0
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; bench.py cleans up
        return 130
    except Exception as e:  # report any failure as one line, for bench.py
        print(f"error: {len(socks)} of {n} connections: {e}", flush=True)
        return 1
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
