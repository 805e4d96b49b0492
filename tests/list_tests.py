#!/usr/bin/env python3
# The integration test list, discovered from the sources: meson runs this at configure time
# (tests/integration/meson.build) and makes one meson test per criterion Test() it prints, so a
# new Test() runs without being listed by hand anywhere.
"""Usage: list_tests.py [--dir DIR] FILE...

Prints one line per criterion Test() found at the start of a line in each FILE:

    <file stem> <suite>/<name> <meson timeout in s> <parallel|serial>

meson timeout  2 x the Test()'s `.timeout = N` (rounded up), so criterion's own timeout fires
               first and reports which test hung; DEFAULT_TIMEOUT when the Test() sets none.
serial         the Test() carries a `/* serial */` comment (inside its parentheses or after
               them on the same line): it measures timings or uses thousands of sockets and
               must not share the machine with another test. Every other Test() is parallel.

Exits 1 (so configure fails) on a file without a Test(), a name used twice, a Test() that
cannot be parsed, a ParameterizedTest()/Theory() (they cannot be run by --filter=suite/name),
or, with --dir, a test_*.c file in DIR that is not among the FILEs (it would never run).
"""

import math
import os
import re
import sys

# The meson timeout of a Test() without .timeout: each such test (test_cli.c) runs the
# binary once and exits in well under a second.
DEFAULT_TIMEOUT = 15
TIMEOUT_FACTOR = 2

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TEST_START = re.compile(r"^Test\(", re.M)
UNSUPPORTED = re.compile(r"^(ParameterizedTest|Theory)\(", re.M)
TIMEOUT = re.compile(r"\.timeout\s*=\s*([0-9]+(?:\.[0-9]*)?)")
SERIAL = re.compile(r"/\*\s*serial\b")


def fail(msg):
    print(f"list_tests.py: {msg}", file=sys.stderr)
    sys.exit(1)


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def close_paren(text, open_pos, where):
    """Index of the ')' that closes the '(' at open_pos, skipping string literals."""
    depth = 0
    i = open_pos
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    fail(f"{where}: Test( is never closed")


def tests_in(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = []
    m = UNSUPPORTED.search(text)
    if m:
        fail(f"{path}:{line_of(text, m.start())}: {m.group(1)}() is not supported "
             "(meson runs each test alone with --filter=suite/name)")
    for m in TEST_START.finditer(text):
        where = f"{path}:{line_of(text, m.start())}"
        end = close_paren(text, m.end() - 1, where)
        args = text[m.end():end]
        eol = text.find("\n", end)
        span = text[m.start():eol if eol >= 0 else len(text)]
        head = re.match(rf"\s*({IDENT})\s*,\s*({IDENT})\s*(,|$)", args)
        if not head:
            fail(f"{where}: cannot read the suite and name of this Test()")
        t = TIMEOUT.search(args)
        timeout = math.ceil(TIMEOUT_FACTOR * float(t.group(1))) if t else DEFAULT_TIMEOUT
        parallel = "serial" if SERIAL.search(span) else "parallel"
        found.append((f"{head.group(1)}/{head.group(2)}", timeout, parallel))
    if not found:
        fail(f"{path}: no Test() at the start of a line")
    return found


def main(argv):
    directory = None
    if len(argv) >= 2 and argv[0] == "--dir":
        directory, argv = argv[1], argv[2:]
    if not argv:
        fail("no files given")
    if directory is not None:
        given = {os.path.realpath(p) for p in argv}
        for name in sorted(os.listdir(directory)):
            path = os.path.realpath(os.path.join(directory, name))
            if re.fullmatch(r"test_.*\.c", name) and path not in given:
                fail(f"{os.path.join(directory, name)} is not listed in meson.build: "
                     "its tests would never run")
    seen = {}
    out = []
    for path in argv:
        stem = os.path.splitext(os.path.basename(path))[0]
        for name, timeout, parallel in tests_in(path):
            if name in seen:
                fail(f"{name} is defined in both {seen[name]} and {path}")
            seen[name] = path
            out.append(f"{stem} {name} {timeout} {parallel}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
