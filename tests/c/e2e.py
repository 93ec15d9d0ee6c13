#!/usr/bin/env python3
"""End-to-end tests of the C programs over real sockets on 127.0.0.1.

    python3 e2e.py SCENARIO PROGRAM [ARGS...]

Each scenario starts the program (master and children), talks HTTP to it, stops it by PID and
proves nothing is left behind: this driver makes itself a child subreaper, so any process the
master failed to reap is re-parented here and detected. Every wait is bounded.
"""

import ctypes
import http.client
import json
import os
import queue
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
READY = re.compile(r"^ready pid=(\d+) children=(\d+(?:,\d+)*)$")
# A scenario's exit status when a tool it needs is missing and cannot be installed (ctest's
# SKIP_RETURN_CODE for it).
SKIP = 77


def fail(message):
    raise AssertionError(message)


def check(cond, message):
    if not cond:
        fail(message)


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        fail(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def children_of(parent):
    """Processes (zombies included) whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ppid_of(int(entry)) == parent:
            found.append(int(entry))
    return found


def alive(pid):
    # A process that is reaped between the open and the read fails the read with ESRCH.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    fail(f"timed out after {timeout} s waiting for {what}")


class Server:
    """A master process with its stdout read line by line on a thread."""

    def __init__(self, argv, stderr=None):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern, timeout=20):
        """Waits for a stdout line matching `pattern`; returns the match."""
        rx = re.compile(pattern)
        for line in self.seen:
            m = rx.search(line)
            if m:
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"no line matching {pattern!r} within {timeout} s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                fail(f"stdout closed (exit {self.proc.poll()}) before {pattern!r}; saw {self.seen}")
            print(f"  | {line}", flush=True)
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m

    def ready(self):
        m = self.expect(READY.pattern)
        check(int(m.group(1)) == self.proc.pid, f"ready pid {m.group(1)} != {self.proc.pid}")
        return [int(p) for p in m.group(2).split(",")]

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Signals the master, expects exit status 0, and proves nothing is left behind."""
        self.finish(self.begin_stop(sig), sig, timeout)

    def begin_stop(self, sig=signal.SIGTERM):
        """Signals the master; returns its children, for `finish`."""
        kids = children_of(self.proc.pid)
        self.proc.send_signal(sig)
        return kids

    def finish(self, kids, sig=signal.SIGTERM, timeout=20):
        """After `begin_stop`: expects exit status 0 and proves nothing is left behind."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            fail(f"master {self.proc.pid} still running {timeout} s after {sig.name}")
        check(code == 0, f"master exit status {code} after {sig.name}, expected 0")
        assert_nothing_left(kids)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def assert_nothing_left(pids=()):
    # Orphans would be re-parented to this subreaper; give the kernel a moment to do so.
    time.sleep(0.1)
    left = [p for p in pids if alive(p)] + children_of(os.getpid())
    check(not left, f"processes left behind: {sorted(set(left))}")


def request(port, path, method="GET", body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def wait_serving(port, server, timeout=20):
    def up():
        check(server.proc.poll() is None, f"server exited with {server.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(up, timeout, f"port {port} to accept")


# ---- scenarios ---------------------------------------------------------------------------------


def demo_routes(prog, extra=()):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", *extra])
    try:
        kids = srv.ready()
        check(len(kids) == 2, f"expected 2 children, got {kids}")
        status, headers, body = request(port, "/")
        check((status, body) == (200, b"Hello, World!"), f"/ gave {status} {body!r}")
        check(headers.get("Content-Type", "").startswith("text/plain"), f"/ headers {headers}")

        payload = bytes(range(256)) * 40 + b"end"
        status, _, body = request(port, "/echo", "POST", payload)
        check((status, body) == (200, payload), f"/echo gave {status}, {len(body)} bytes")
        status, _, body = request(port, "/echo?x=1", "PUT", b"")
        check((status, body) == (200, b""), f"empty /echo gave {status} {body!r}")

        status, _, body = request(port, "/headers", headers={"X-Test": "abc def"})
        lines = body.decode().splitlines()
        check(status == 200 and "X-Test: abc def" in lines, f"/headers gave {status} {lines}")
        check(f"Host: 127.0.0.1:{port}" in lines, f"/headers lacks Host: {lines}")

        for _ in range(4):
            status, _, body = request(port, "/pid")
            check(status == 200 and int(body) in kids, f"/pid gave {status} {body!r}, kids {kids}")

        t0 = time.monotonic()
        status, _, body = request(port, "/sleep?ms=200")
        took = time.monotonic() - t0
        check((status, body) == (200, b"slept"), f"/sleep gave {status} {body!r}")
        check(0.2 <= took < 5, f"/sleep?ms=200 took {took:.3f} s")
        status, _, _ = request(port, "/sleep?ms=abc")
        check(status == 400, f"/sleep?ms=abc gave {status}")

        for path in ["/crash", "/nope", "/echo/more", "/pidx"]:
            status, _, _ = request(port, path, "DELETE")
            check(status == 404, f"{path} gave {status}, expected 404")

        conformance_routes(port)
        srv.stop(signal.SIGTERM)
    finally:
        srv.kill()


def demo_routes_batch(prog):
    """--batch: every route as without it, and runs of pipelined requests of several routes,
    answered in order, on 8 connections at once."""
    demo_routes(prog, ["--batch"])
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1", "--batch"])
    try:
        srv.ready()
        # A deferred answer must end its connection's run of a batch: the batch handler
        # stops after every route but /, and the library offers the rest again.
        paths = ["/", "/", "/pid", "/", "/defer?ms=1", "/", "/status?code=201", "/",
                 "/sleep?ms=1", "/"] * 4
        bodies = {"/": b"Hello, World!", "/sleep?ms=1": b"slept", "/defer?ms=1": b"deferred 1 ms"}
        burst = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths)
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        for c in conns:
            c.sendall(burst)
        for c in conns:
            have = b""
            for p in paths:
                head, have = read_head(c, have)
                status = int(head.split(b" ", 2)[1])
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                check(length, f"{p}: no Content-Length in {head!r}")
                body, have = take(c, int(length.group(1)), have)
                want = bodies.get(p)
                check(status == (201 if p.startswith("/status") else 200), f"{p}: {status}")
                check(want is None or body == want, f"{p}: body {body!r}")
            c.close()
        srv.stop(signal.SIGTERM)
    finally:
        srv.kill()


def split_head(raw):
    """The status line and the fields of the response head at the start of `raw`, and the bytes
    after the head."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    check(sep, f"no complete response head in {raw!r}")
    lines = head.decode().split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], fields, rest


def conformance_routes(port):
    """OPTIONS * and /status?code=N (issue 19): how the library frames each status."""
    raw = raw_exchange(port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line, fields, rest = split_head(raw)
    check(line == "HTTP/1.1 200 OK", f"OPTIONS * gave {raw!r}")
    check(fields.get("allow") == ["GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"],
          f"OPTIONS * Allow: {fields.get('allow')}")
    check(fields.get("content-length") == ["0"] and rest == b"", f"OPTIONS * gave {raw!r}")

    # 204 and 304 end with their head: no Content-Length, no Transfer-Encoding, no body, so
    # the pipelined request after each is answered right after the empty line (HEAD too).
    pipelined = b"".join(
        b"%s /status?code=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (method, code)
        for code in (204, 304) for method in (b"GET", b"HEAD"))
    raw = raw_exchange(port, pipelined + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    rest = raw
    for code, reason in [(204, "No Content")] * 2 + [(304, "Not Modified")] * 2:
        line, fields, rest = split_head(rest)
        check(line == f"HTTP/1.1 {code} {reason}", f"/status?code={code} gave {line!r} in {raw!r}")
        check("content-length" not in fields and "transfer-encoding" not in fields,
              f"/status?code={code} framing {fields}")
    line, fields, rest = split_head(rest)
    check(line == "HTTP/1.1 200 OK" and rest == b"Hello, World!",
          f"the request after the 204s and 304s gave {line!r} {rest!r}")

    for code in (200, 202, 404, 503, 599):
        status, headers, body = request(port, f"/status?code={code}", "POST", b"ignored")
        check((status, body, headers.get("Content-Length")) == (code, b"", "0"),
              f"/status?code={code} gave {status} {headers} {body!r}")
    # 1xx statuses are the library's own, so it refuses them, and the demo says 400.
    for bad in ["abc", "", "99", "600", "1000", "100", "101", "199", "2x0"]:
        status, _, body = request(port, f"/status?code={bad}")
        check(status == 400 and body, f"/status?code={bad} gave {status} {body!r}")
    status, _, _ = request(port, "/status")
    check(status == 400, f"/status without a code gave {status}")


def read_head(sock, have=b""):
    """Reads until the end of a response head; returns the head and the bytes after it."""
    while b"\r\n\r\n" not in have:
        chunk = sock.recv(65536)
        check(chunk, f"closed before a whole response head: {have!r}")
        have += chunk
    head, _, rest = have.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def take(sock, n, have=b""):
    """The first `n` bytes (of `have`, then of the socket) and the bytes after them."""
    while len(have) < n:
        chunk = sock.recv(65536)
        check(chunk, f"closed after {have!r}, expected {n} bytes")
        have += chunk
    return have[:n], have[n:]


def read_exactly(sock, n, have=b""):
    data, extra = take(sock, n, have)
    check(not extra, f"more than the {n} bytes expected: {extra!r}")
    return data


def concurrent_gets(port, path, count, timeout=20):
    """Opens `count` connections, sends GET `path` on each at once, reads every response
    (Connection: close ends each); returns the bodies and the seconds from the first request
    sent to the last response read."""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=timeout) for _ in range(count)]
    sel = selectors.DefaultSelector()
    got = {}
    try:
        t0 = time.monotonic()
        for s in socks:
            s.sendall(request)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            got[s] = b""
        open_ = count
        deadline = t0 + timeout
        while open_:
            check(time.monotonic() < deadline, f"{open_} of {count} {path} still unanswered")
            for key, _ in sel.select(timeout=1):
                chunk = key.fileobj.recv(65536)
                if chunk:
                    got[key.fileobj] += chunk
                else:
                    sel.unregister(key.fileobj)
                    open_ -= 1
        took = time.monotonic() - t0
    finally:
        sel.close()
        for s in socks:
            s.close()
    return [got[s] for s in socks], took


def demo_defer(prog):
    """/defer?ms=N: the handler defers, a timer thread completes. 1,000 at once on one child
    without handler threads wait together, not one after the other (which would take 100 s)."""
    # A thousand client sockets here and as many in the child, which inherits the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1"])
    try:
        srv.ready()
        t0 = time.monotonic()
        status, _, body = request(port, "/defer?ms=200")
        took = time.monotonic() - t0
        check((status, body) == (200, b"deferred 200 ms"), f"/defer?ms=200 gave {status} {body!r}")
        check(0.2 <= took < 5, f"/defer?ms=200 took {took:.3f} s")
        status, _, _ = request(port, "/defer?ms=x")
        check(status == 400, f"/defer?ms=x gave {status}")

        # Pipelined: the request after a deferred one is answered after it.
        raw = raw_exchange(port, b"GET /defer?ms=150 HTTP/1.1\r\nHost: x\r\n\r\n"
                                 b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line, _, rest = split_head(raw)
        check(line == "HTTP/1.1 200 OK" and rest.startswith(b"deferred 150 ms"),
              f"pipelined /defer gave {raw!r}")
        line, _, rest = split_head(rest[len(b"deferred 150 ms"):])
        check(line == "HTTP/1.1 200 OK" and rest == b"Hello, World!", f"then {raw!r}")

        for attempt in range(3):
            bodies, took = concurrent_gets(port, "/defer?ms=100", 1000)
            bad = [b for b in bodies if not b.endswith(b"\r\n\r\ndeferred 100 ms")]
            check(not bad, f"{len(bad)} of 1000 /defer?ms=100 failed, e.g. {bad[:1]!r}")
            print(f"  1000 concurrent /defer?ms=100 on one child: {took:.3f} s", flush=True)
            if took < 1.0:
                break
        check(took < 1.0, f"1000 concurrent /defer?ms=100 took {took:.3f} s, expected under 1 s")
        srv.stop()
    finally:
        srv.kill()


UPGRADE = b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


def demo_upgrade_echo(prog):
    """/upgrade with Upgrade: echo: a 101, then the child echoes every byte until the client
    closes; the bytes sent with the request, and the responses pipelined before it, first."""
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1", "--grace-ms", "3000"])
    try:
        srv.ready()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(UPGRADE + b"hello")
            head, rest = read_head(s)
            line, fields, _ = split_head(head)
            check(line == "HTTP/1.1 101 Switching Protocols", f"/upgrade gave {head!r}")
            check(fields.get("upgrade") == ["echo"] and fields.get("connection") == ["Upgrade"],
                  f"/upgrade fields {fields}")
            check("content-length" not in fields, f"a 101 with framing: {fields}")
            check(read_exactly(s, 5, rest) == b"hello", "the bytes after the request came back")
            for message in (b"world", bytes(range(256)) * 64):
                s.sendall(message)
                check(read_exactly(s, len(message)) == message, "an echo differs")
            s.shutdown(socket.SHUT_WR)
            check(s.recv(1) == b"", "the echo ends with the client's close")

        # A request answered before the upgrade on the same connection, in one segment.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + UPGRADE + b"first")
            head, rest = read_head(s)
            check(head.startswith(b"HTTP/1.1 200 OK"), f"the request before /upgrade: {head!r}")
            body, rest = take(s, len(b"Hello, World!"), rest)
            check(body == b"Hello, World!", f"the body before /upgrade: {body!r}")
            head, rest = read_head(s, rest)
            check(head.startswith(b"HTTP/1.1 101 "), f"then {head!r}")
            check(read_exactly(s, 5, rest) == b"first", "the leftover came back first")

        status, headers, _ = request(port, "/upgrade")
        check(status == 426 and headers.get("Upgrade") == "echo", f"plain /upgrade gave {status}")
        check(request(port, "/")[0] == 200, "the child still serves")

        # An echo connection still open when the child stops: ended by exit_child, which the
        # child waits for before it exits 0.
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.sendall(UPGRADE)
        read_head(held)
        srv.stop()
        check(held.recv(1) == b"", "the held echo connection was ended")
        held.close()
    finally:
        srv.kill()


def demo_sigint(prog):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1", "--grace-ms", "2000"])
    try:
        kids = srv.ready()
        check(len(kids) == 1, f"expected 1 child, got {kids}")
        status, _, body = request(port, "/pid")
        check(int(body) == kids[0], f"/pid gave {body!r}, child is {kids[0]}")
        srv.stop(signal.SIGINT)
    finally:
        srv.kill()


def demo_crash(prog):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", "--allow-crash",
                  "--recover-threshold", "4"])
    try:
        kids = srv.ready()
        try:
            status, _, _ = request(port, "/crash")
            fail(f"/crash answered {status}")
        except (http.client.HTTPException, ConnectionError, socket.timeout):
            pass  # the child died mid-request: the connection drops

        def replaced():
            now = set(children_of(srv.proc.pid))
            return len(now) == 2 and len(now & set(kids)) == 1

        wait_until(replaced, 15, "the crashed child to be replaced")
        fresh = set(children_of(srv.proc.pid)) - set(kids)
        print(f"  children {kids} -> {sorted(set(kids) - fresh)} + new {sorted(fresh)}")
        check(srv.proc.poll() is None, "master exited after one crash")
        served = {int(request(port, "/pid")[2]) for _ in range(30)}
        check(served <= set(children_of(srv.proc.pid)), f"served by unknown pids {served}")
        srv.stop()
    finally:
        srv.kill()


def demo_reuseport(prog):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", "--reuseport"])
    try:
        kids = srv.ready()
        served = [int(request(port, "/pid")[2]) for _ in range(40)]
        check(set(served) == set(kids), f"40 connections reached {set(served)}, kids {kids}")
        srv.stop()
    finally:
        srv.kill()


def demo_reload(prog):
    """SIGHUP: a new generation replaces every child, the old one exits 0, and the port keeps
    answering throughout."""
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2"])
    try:
        kids = srv.ready()
        srv.proc.send_signal(signal.SIGHUP)
        m = srv.expect(r"^reloaded generation=(\d+) children=(\d+(?:,\d+)*)$")
        fresh = [int(p) for p in m.group(2).split(",")]
        check(m.group(1) == "2", f"reloaded to generation {m.group(1)}, expected 2")
        check(len(fresh) == 2 and not set(fresh) & set(kids), f"{kids} reloaded to {fresh}")
        wait_until(lambda: not any(alive(p) for p in kids), 15, "the old generation to exit")
        served = {int(request(port, "/pid")[2]) for _ in range(20)}
        check(served <= set(fresh), f"served by {served} after the reload to {fresh}")
        status, _, body = request(port, "/stats")
        stats = json.loads(body)
        print(f"  /stats {body}")
        check(status == 200 and stats["master"]["pid"] == srv.proc.pid, f"/stats {body}")
        check(stats["master"]["generation"] == 2 and stats["master"]["reloads"] == 1,
              f"/stats after one reload: {stats['master']}")
        serving = sorted(c["pid"] for c in stats["children"] if c["state"] == "serving")
        check(serving == sorted(fresh), f"/stats serving {serving}, reloaded to {fresh}")
        check(stats["master"]["requests"] >= 20, f"/stats counted {stats['master']['requests']}")
        srv.stop()
    finally:
        srv.kill()


def demo_binary_upgrade(prog):
    """SIGUSR2: a new master prints its own ready line, the old one exits 0 once the new
    children listen, and the port answers throughout; then the new master stops cleanly."""
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2"])
    new = None
    try:
        kids = srv.ready()
        srv.proc.send_signal(signal.SIGUSR2)
        m = srv.expect(rf"^ready pid=(?!{srv.proc.pid}\b)(\d+) children=(\d+(?:,\d+)*)$")
        new = int(m.group(1))
        fresh = [int(p) for p in m.group(2).split(",")]
        try:
            code = srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fail("the old master did not exit after the upgrade")
        check(code == 0, f"old master exit status {code}, expected 0")
        wait_until(lambda: not any(alive(p) for p in kids), 15, "the old children to exit")
        served = {int(request(port, "/pid")[2]) for _ in range(20)}
        check(served <= set(fresh), f"served by {served} after the upgrade to {fresh}")
        check(ppid_of(new) == os.getpid(), "the new master was not handed to the subreaper")
        os.kill(new, signal.SIGTERM)
        wait_until(lambda: not alive(new), 20, "the new master to stop")
        _, status = os.waitpid(new, 0)  # this subreaper's child now, a zombie until then
        check(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0,
              f"new master wait status {status:#x}, expected exit 0")
        new = None
        assert_nothing_left(fresh)
    finally:
        if new is not None and alive(new):
            os.kill(new, signal.SIGKILL)
        srv.kill()


def demo_flags(prog):
    bad = [["--children", "x"], ["--bogus"], ["--network", "udp"], ["--addr"],
           ["--children", "5000"], ["--header-timeout-ms", "0"], ["--grace-ms", "-5"],
           ["--recover-threshold", "many"], ["--child-timeout-ms", "50"]]
    for args in bad:
        r = subprocess.run([prog, *args], capture_output=True, text=True, timeout=20)
        check(r.returncode == 2, f"{args}: exit {r.returncode}, expected 2; stderr {r.stderr!r}")
        check("usage: demo_server" in r.stderr, f"{args}: no usage on stderr: {r.stderr!r}")
        check(r.stdout == "", f"{args}: wrote to stdout: {r.stdout!r}")
    r = subprocess.run([prog, "--help"], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0 and "usage: demo_server" in r.stdout, f"--help: {r}")
    assert_nothing_left()


def demo_bind_error(prog):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run([prog, "--addr", f"127.0.0.1:{port}", "--children", "2"],
                           capture_output=True, text=True, timeout=30)
    check(r.returncode == 1, f"exit {r.returncode} on a used port; stderr {r.stderr!r}")
    check(str(port) in r.stderr, f"the error does not name the address: {r.stderr!r}")
    check("ready" not in r.stdout, f"printed ready on a used port: {r.stdout!r}")
    assert_nothing_left()


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].split()
    return []


def demo_user(prog):
    """--user nobody as root: every child, a replacement too, runs as nobody with only its
    groups and no way back, the master stays root and still stops them; an unknown user is an
    error before any child starts. Skipped when not root (CI runs as root)."""
    if os.geteuid() != 0:
        print("SKIP demo_user: needs root", flush=True)
        return
    import pwd
    nobody = pwd.getpwnam("nobody")
    r = subprocess.run([prog, "--addr", "127.0.0.1:0", "--user", "no-such-user-prefork"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and "no such user" in r.stderr, f"unknown user: {r}")
    check("ready" not in r.stdout, f"printed ready with an unknown user: {r.stdout!r}")
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", "--user", "nobody",
                  "--allow-crash", "--cpu-affinity"])
    try:
        kids = srv.ready()
        check(proc_status(srv.proc.pid, "Uid")[0] == "0", "the master is not root")

        def dropped(pid):
            check(proc_status(pid, "Uid") == [str(nobody.pw_uid)] * 4, f"child {pid} uid")
            check(proc_status(pid, "Gid") == [str(nobody.pw_gid)] * 4, f"child {pid} gid")
            check(proc_status(pid, "NoNewPrivs") == ["1"], f"child {pid} may regain privileges")

        for pid in kids:
            dropped(pid)
        status, _, _ = request(port, "/")
        check(status == 200, f"GET / as nobody gave {status}")
        os.kill(kids[0], signal.SIGKILL)
        wait_until(lambda: set(children_of(srv.proc.pid)) - set(kids), 10, "a replacement")
        for pid in set(children_of(srv.proc.pid)) - set(kids):
            dropped(pid)
        srv.stop()
    finally:
        srv.kill()


def demo_limits(prog):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1", "--max-body", "16",
                  "--handler-threads", "2", "--idle-timeout-ms", "300"])
    try:
        srv.ready()
        status, _, body = request(port, "/echo", "POST", b"0123456789abcdef")
        check((status, body) == (200, b"0123456789abcdef"), f"16-byte body gave {status} {body!r}")
        status, _, _ = request(port, "/echo", "POST", b"x" * 17)
        check(status == 413, f"17-byte body with --max-body 16 gave {status}")
        # An idle keep-alive connection is closed by the server after --idle-timeout-ms.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            t0 = time.monotonic()
            check(s.recv(1) == b"", "idle connection received data")
            took = time.monotonic() - t0
            check(0.2 <= took < 4, f"idle connection closed after {took:.2f} s, expected ~0.3")
        srv.stop()
    finally:
        srv.kill()


def hello(prog):
    port = free_port()
    srv = Server([prog, f"127.0.0.1:{port}"])
    try:
        wait_serving(port, srv)
        status, _, body = request(port, "/anything")
        check((status, body) == (200, b"Hello, World!\n"), f"hello gave {status} {body!r}")
        srv.stop()
    finally:
        srv.kill()


def hooks(prog):
    port = free_port()
    srv = Server([prog, f"127.0.0.1:{port}", "2"])
    try:
        m = srv.expect(rf"^on_master_ready master=(\d+) children=(\d+),(\d+) addr=127\.0\.0\.1:{port}$")
        check(int(m.group(1)) == srv.proc.pid, "on_master_ready reports another master")
        a, b = int(m.group(2)), int(m.group(3))
        for pid, slot in ((a, 0), (b, 1)):
            srv.expect(rf"^command_producer slot={slot} listener_fd=\d+ lifeline_fd=\d+ -> pid {pid}$")
            srv.expect(rf"^on_child_spawn pid={pid}$")
            srv.expect(rf"^init_child pid={pid}$")
        status, _, body = request(port, "/")
        check(status == 200 and body.startswith(b"served by "), f"hooks gave {status} {body!r}")

        os.kill(a, signal.SIGKILL)
        srv.expect(rf"^on_child_exit pid={a} code=-1 signal=9$")
        srv.expect(r"^command_producer slot=0 listener_fd=\d+ lifeline_fd=\d+ -> pid \d+$")
        c = int(srv.expect(rf"^on_child_recover old={a} new=(\d+)$").group(1))
        srv.expect(rf"^on_child_spawn pid={c}$")
        srv.expect(rf"^init_child pid={c}$")
        srv.stop()
        for pid in (b, c):
            srv.expect(rf"^exit_child pid={pid}$", timeout=1)
            srv.expect(rf"^on_child_exit pid={pid} code=0 signal=0$", timeout=1)
    finally:
        srv.kill()


def abi_v0_1(prog):
    """A program built against the 0.1 header, run against this library: it must serve and see
    every hook, as the hooks scenario checks. Its undefined symbols prove which header it was
    built against: the 0.1 entry points, not the size-passing ones the current macros call."""
    out = subprocess.run(["nm", "-D", "--undefined-only", prog], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    used = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    for old in ("prefork_new", "prefork_set_hooks"):
        check(old in used, f"{prog} does not call the 0.1 entry point {old}: {sorted(used)}")
    for new in ("prefork_new_sized", "prefork_set_hooks_sized"):
        check(new not in used, f"{prog} calls {new}: it was built against a newer header")
    hooks(prog)


def hooks_master_death(prog):
    port = free_port()
    srv = Server([prog, f"127.0.0.1:{port}", "2"])
    try:
        m = srv.expect(r"^on_master_ready master=\d+ children=(\d+),(\d+) addr=\S+$")
        kids = [int(m.group(1)), int(m.group(2))]
        srv.proc.kill()  # SIGKILL: no chance to stop the children
        srv.proc.wait(timeout=10)
        for pid in kids:
            srv.expect(rf"^on_master_death child={pid}$", timeout=10)
        reap_orphans(kids)
    finally:
        for pid in children_of(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        srv.kill()


def reap_orphans(kids):
    """Children whose master died are re-parented to this subreaper: reap each, check that it
    exited 0 within 15 s, and that nothing else is left."""
    for pid in kids:
        deadline = time.monotonic() + 15
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                check(os.waitstatus_to_exitcode(status) == 0,
                      f"orphan {pid} exit status {os.waitstatus_to_exitcode(status)}")
                break
            check(time.monotonic() < deadline, f"orphan {pid} still running")
            time.sleep(0.02)
    assert_nothing_left(kids)


def raw_exchange(port, data, timeout=10):
    """Sends `data` and returns every byte until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def server(prog):
    port = free_port()
    srv = Server([prog, f"127.0.0.1:{port}"])
    try:
        srv.expect(r"^ready$")
        status, headers, body = request(port, "/inspect?a=1&b=%20", "PATCH", b"the body",
                                        {"X-Probe": "found it"})
        check(status == 203 and headers.get("X-Inspected") == "yes"
              and headers.get("Content-Type") == "text/plain", f"/inspect: {status} {headers}")
        got = dict(l.split(": ", 1) for l in body.decode().splitlines())
        peer = got.pop("peer", "")
        check(re.fullmatch(r"127\.0\.0\.1:\d+", peer) is not None, f"peer {peer!r}")
        want = {"method": "PATCH", "target": "/inspect?a=1&b=%20", "path": "/inspect",
                "query": "a=1&b=%20", "minor_version": "1", "probe": "found it",
                "missing": "<none>", "body": "the body", "refusals": "ok"}
        check(got == want, f"/inspect gave {got}, expected {want}")
        # Pipelined: one read, one handle_batch call for the four, answered in order; a stream
        # among them ends its batch, and the request after it comes in the next.
        batch = b"".join(b"GET /inspect?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(4))
        raw = raw_exchange(port, batch + b"GET /stream?n=7 HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /inspect?n=9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        queries = re.findall(rb"\nquery: (n=\d)\n", raw)
        check(queries == [b"n=0", b"n=1", b"n=2", b"n=3", b"n=9"] and b"piece 0\n" in raw,
              f"pipelined /inspect gave {raw!r}")
        srv.expect(r"^batch 6$", timeout=5)
        srv.expect(r"^freed n=7$", timeout=5)
        raw = raw_exchange(port, b"GET http://example.test/inspect?q HTTP/1.0\r\n\r\n")
        check(b"\npath: /inspect\n" in raw and b"\nminor_version: 0\n" in raw
              and b"\nquery: q\n" in raw, f"absolute-form HTTP/1.0 /inspect gave {raw!r}")

        want = b"".join(b"piece %d\n" % i for i in range(5))
        status, headers, body = request(port, "/stream?n=5")
        # Exactly the pieces: the handler's write after set_body_stream must not show.
        check((status, body) == (200, want), f"/stream?n=5 gave {status} {body!r}")
        check(headers.get("Transfer-Encoding") == "chunked", f"HTTP/1.1 stream headers {headers}")
        srv.expect(r"^freed n=5$", timeout=5)

        raw = raw_exchange(port, b"GET /stream?n=3 HTTP/1.0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower(),
              f"HTTP/1.0 stream head {head!r}")
        check(body == want[: len(b"piece 0\n") * 3], f"HTTP/1.0 stream body {body!r}")
        srv.expect(r"^freed n=3$", timeout=5)

        raw = raw_exchange(port, b"HEAD /stream?n=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        check(raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\n"), f"HEAD gave {raw!r}")
        srv.expect(r"^freed n=4$", timeout=5)

        raw = raw_exchange(port, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        check(b"piece 1\n" in raw and not raw.endswith(b"0\r\n\r\n"),
              f"a failed stream must end without the last chunk: {raw!r}")
        srv.expect(r"^freed fail$", timeout=5)

        # prefork_response_set_status(204 or 304) + prefork_response_write: the body is dropped
        # (the next response follows the empty line at once), and the child logs that once.
        raw = raw_exchange(port, b"GET /drop?code=204 HTTP/1.1\r\nHost: x\r\n\r\n"
                                 b"GET /drop?code=304 HTTP/1.1\r\nHost: x\r\n\r\n"
                                 b"GET /drop?code=200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = raw
        for line_want in ["HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified"]:
            line, fields, rest = split_head(rest)
            check(line == line_want and "content-length" not in fields
                  and "transfer-encoding" not in fields, f"/drop gave {raw!r}")
        line, fields, rest = split_head(rest)
        check(line == "HTTP/1.1 200 OK" and fields.get("content-length") == ["7"]
              and rest == b"dropped", f"/drop?code=200 gave {raw!r}")
        # A stream after them: its "freed" line comes after any log line of the drops.
        status, _, _ = request(port, "/stream?n=1")
        check(status == 200, f"/stream?n=1 gave {status}")
        srv.expect(r"^freed n=1$", timeout=5)
        dropped = [l for l in srv.seen if l.startswith("log warn: ") and "set a body" in l]
        check(len(dropped) == 1 and "204 response" in dropped[0],
              f"expected one log line for the dropped bodies, got {dropped}")

        status, _, body = request(port, "/defer-misuse")
        check((status, body) == (200, b"misuse: ok"), f"/defer-misuse gave {status} {body!r}")
        srv.expect(r"^completed twice: refused$", timeout=5)
        status, headers, _ = request(port, "/defer-free")
        check(status == 500 and headers.get("Connection") == "close",
              f"a deferred response freed uncompleted gave {status} {headers}")
        srv.expect(r"^log warn: .*dropped without being completed", timeout=5)

        # Still deferred when the child drains: a 503 250 ms before the end of the 1 s grace
        # period, ahead of the master's SIGKILL; the child completes it after prefork_free.
        late = socket.create_connection(("127.0.0.1", port), timeout=10)
        late.sendall(b"GET /defer-late HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        t0 = time.monotonic()
        kids = srv.begin_stop()
        head, _ = read_head(late)
        took = time.monotonic() - t0
        late.close()  # the child's lingering close ends with it, and the child with that
        check(head.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in head,
              f"a deferred response pending at the drain's end gave {head!r}")
        check(0.5 < took < 1.0, f"the drain's 503 came after {took:.3f} s (grace 1 s)")
        print(f"  the drain's 503 for a deferred response came after {took:.3f} s", flush=True)
        srv.finish(kids)
        srv.expect(r"^late completion: ok$", timeout=5)
    finally:
        srv.kill()


class EchoClient:
    """A connection to serve_echo: its greeting names the child that accepted it."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        m = re.fullmatch(r"hello from (\d+)", self.line())
        check(m is not None, "no greeting")
        self.pid = int(m.group(1))

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            check(chunk, f"connection closed after {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def echo(self, *pieces):
        """Sends the pieces with pauses between them; returns the lines that came back."""
        for piece in pieces:
            self.sock.sendall(piece)
            time.sleep(0.01)
        return [self.line() for _ in range(b"".join(pieces).count(b"\n"))]

    def rest(self):
        """Everything until the server closes the connection."""
        out = self.buf
        while chunk := self.sock.recv(4096):
            out += chunk
        self.sock.close()
        return out


def echo_pids(port, connections, kids):
    """Echoes through `connections` fresh connections; returns the set of children that
    answered, each of which must be in `kids`."""
    served = set()
    for i in range(connections):
        c = EchoClient(port)
        check(c.pid in kids, f"greeted by {c.pid}, not one of {kids}")
        got = c.echo(b"line %d\n" % i)
        check(got == [f"line {i}"], f"echo through {c.pid} gave {got}")
        c.sock.close()
        served.add(c.pid)
    return served


def serve_echo(prog):
    """Serve mode: the children run the example's own poll loop under the supervisor. Once with
    one SO_REUSEPORT socket per child and explicit readiness (prefork_child_ready), once with
    the shared listener and readiness when serve starts."""
    for flags in (["--reuseport", "--explicit-ready"], []):
        print(f"  serve_echo {' '.join(flags) or '(shared listener, ready on start)'}")
        port = free_port()
        srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "3", *flags])
        try:
            kids = srv.ready()
            check(len(kids) == 3, f"expected 3 children, got {kids}")
            for pid in kids:
                srv.expect(rf"^serving pid={pid}$")

            c = EchoClient(port)
            got = c.echo(b"one\ntwo\n", b"thr", b"ee\n")
            check(got == ["one", "two", "three"], f"echo of pieces gave {got}")
            c.sock.close()
            served = echo_pids(port, 40, kids)
            if "--reuseport" in flags:
                check(served == set(kids), f"40 connections reached {served}, children {kids}")

            os.kill(kids[0], signal.SIGKILL)
            srv.expect(rf"^child_exit pid={kids[0]} code=-1 signal=9$")
            new = int(srv.expect(rf"^recover old={kids[0]} new=(\d+)$").group(1))
            srv.expect(rf"^serving pid={new}$")
            now = [new, *kids[1:]]
            served = echo_pids(port, 40, now)
            if "--reuseport" in flags:
                check(new in served, f"the replacement {new} got none of 40 connections: the "
                      f"slot's socket did not reach it ({served})")

            held = EchoClient(port)
            check(held.echo(b"still here\n") == ["still here"], "echo before the stop")
            srv.stop()
            check(held.rest() == b"bye\n", "the client was not told bye at the stop")
            for pid in now:
                srv.expect(rf"^stopping pid={pid}$", timeout=1)
                srv.expect(rf"^exit_child pid={pid}$", timeout=1)
                srv.expect(rf"^child_exit pid={pid} code=0 signal=0$", timeout=1)
        finally:
            srv.kill()


def serve_echo_master_death(prog):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2"])
    try:
        kids = srv.ready()
        held = EchoClient(port)
        srv.proc.kill()  # SIGKILL: the children learn it from their lifeline, in serve mode too
        srv.proc.wait(timeout=10)
        check(held.rest() == b"bye\n", "the client of a child whose master died was not told bye")
        for pid in kids:
            srv.expect(rf"^exit_child pid={pid}$", timeout=10)
        reap_orphans(kids)
    finally:
        for pid in children_of(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        srv.kill()

# ---- PROXY protocol (issue 20, item 4) --------------------------------------------------------

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src, sport, dst, dport, tlvs=b""):
    """A PROXY protocol version 2 header, PROXY command, TCP over IPv4 or IPv6."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    addrs = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst) + struct.pack("!HH", sport, dport)
    block = addrs + tlvs
    return V2_SIGNATURE + bytes([0x21, 0x21 if fam == socket.AF_INET6 else 0x11]) + \
        struct.pack("!H", len(block)) + block


def peer_via(port, preface, source=None):
    """GET /peer after `preface` (a PROXY header, or nothing) on a fresh connection, from
    `source` if given; returns the raw reply (b"" when the server closed without one)."""
    with socket.socket() as s:
        s.settimeout(10)
        if source:
            s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(preface + b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_to_close(s)


def read_to_close(s):
    """Every byte until the server closes (b"" when it closed without a reply, which unread
    input may turn into a reset)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def body_of(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    check(sep and head.startswith(b"HTTP/1.1 200 "), f"expected a 200, got {raw!r}")
    return body.decode()


def demo_proxy(prog):
    """--proxy-protocol and --proxy-allow over raw sockets, and /peer without them."""
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1"])
    try:
        srv.ready()
        # Without the option /peer is the socket's peer, and a PROXY line is not guessed.
        out = peer_via(port, b"", source="127.0.0.2")
        check(re.fullmatch(r"127\.0\.0\.2:\d+", body_of(out)), f"/peer gave {out!r}")
        out = peer_via(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n")
        check(out.startswith(b"HTTP/1.1 400 "), f"a PROXY line without the option gave {out!r}")
        srv.stop()
    finally:
        srv.kill()

    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", "--proxy-protocol"])
    try:
        srv.ready()
        out = peer_via(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n")
        check(body_of(out) == "203.0.113.7:51234", f"v1 TCP4 /peer gave {out!r}")
        out = peer_via(port, b"PROXY TCP6 2001:db8::7 ::1 65535 80\r\n")
        check(body_of(out) == "[2001:db8::7]:65535", f"v1 TCP6 /peer gave {out!r}")
        out = peer_via(port, v2_header("198.51.100.20", 40000, "127.0.0.1", port))
        check(body_of(out) == "198.51.100.20:40000", f"v2 /peer gave {out!r}")
        # LOCAL (a balancer's health check): the socket's peer stands.
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"
        out = peer_via(port, local, source="127.0.0.3")
        check(re.fullmatch(r"127\.0\.0\.3:\d+", body_of(out)), f"LOCAL /peer gave {out!r}")
        # No header, or a broken one: closed without a reply; the other routes still work.
        check(peer_via(port, b"") == b"", "a connection without a header was answered")
        check(peer_via(port, b"PROXY TCP4 1.2.3.4\r\n") == b"", "a bad v1 header was answered")
        check(peer_via(port, V2_SIGNATURE + b"\x21\x41\x00\x0c") == b"",
              "a v2 header of an unknown family was answered")
        raw = raw_exchange(port, b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        check(raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"Hello, World!"), f"/ gave {raw!r}")
        srv.stop()
    finally:
        srv.kill()

    # An allowlist without loopback: our connections are closed before they are read.
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "1", "--proxy-protocol",
                  "--proxy-allow", "10.0.0.0/8", "--proxy-allow", "2001:db8::/32"])
    try:
        srv.ready()
        out = peer_via(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n")
        check(out == b"", f"a source outside --proxy-allow was answered: {out!r}")
        srv.stop()
    finally:
        srv.kill()

    for bad, named in [(["--proxy-allow", "10.0.0.1/8"], '"10.0.0.1/8"'),
                       (["--proxy-allow", "10.0.0.0/8", "--proxy-allow", "nope"], '"nope"')]:
        r = subprocess.run([prog, *bad], capture_output=True, text=True, timeout=20)
        check(r.returncode == 2 and named in r.stderr and "usage: demo_server" in r.stderr,
              f"{bad}: exit {r.returncode}, stderr {r.stderr!r}")
    assert_nothing_left()


def ensure_installed(command, packages):
    """The path of `command`, installing the Debian `packages` with apt-get when it is missing
    and this runs as root; None (after saying why) when it cannot be had."""
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"SKIP: {command} is not installed, and installing {' '.join(packages)} needs "
              "apt-get as root", flush=True)
        return None
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "-q", "-y"]
    for step in [apt + ["update"], apt + ["install", "--no-install-recommends", *packages]]:
        r = subprocess.run(step, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=400)
        if r.returncode != 0:
            print(f"SKIP: `{' '.join(step)}` failed ({r.returncode}): {r.stderr[-2000:]}", flush=True)
            return None
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


class Balancer:
    """A balancer process (HAProxy, nginx) in the foreground, stopped by its PID."""

    def __init__(self, argv, log):
        self.log = log
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def wait_port(self, port):
        self._wait_accepting(lambda: socket.create_connection(("127.0.0.1", port), timeout=1),
                             port)

    def wait_unix(self, path):
        """Waits for a unix socket such as HAProxy's stats socket, which HAProxy may bind
        after its frontends."""

        def connect():
            s = socket.socket(socket.AF_UNIX)
            try:
                s.settimeout(1)
                s.connect(path)
            except OSError:
                s.close()
                raise
            return s

        self._wait_accepting(connect, path)

    def _wait_accepting(self, connect, where):
        def up():
            if self.proc.poll() is not None:
                fail(f"{self.proc.args[0]} exited with {self.proc.returncode}: {self.logged()}")
            try:
                with connect():
                    return True
            except OSError:
                return False

        wait_until(up, 20, f"{self.proc.args[0]} to listen on {where}")

    def logged(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-3000:]

    def stop(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def through_balancer(front, sources):
    """/peer through the balancer on `front`, from each source address, twice on one
    keep-alive connection: each must be the client's own address and port."""
    for source in sources:
        with socket.socket() as s:
            s.settimeout(10)
            s.bind((source, 0))
            s.connect(("127.0.0.1", front))
            me = "%s:%d" % s.getsockname()
            for last in (False, True):
                close = b"Connection: close\r\n" if last else b""
                s.sendall(b"GET /peer HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n")
                raw = read_response(s)
                print(f"  /peer through the balancer from {me}: {body_of(raw)}", flush=True)
                check(body_of(raw) == me, f"/peer gave {raw!r}, the client is {me}")


def read_response(s):
    """One response with a Content-Length from socket `s` (whose timeout bounds each read)."""
    raw = b""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
            check(m, f"a response without Content-Length: {raw!r}")
            if len(rest) >= int(m.group(1)):
                return raw
        try:
            chunk = s.recv(65536)
        except OSError as e:
            fail(f"{e} after {raw!r}")
        check(chunk, f"closed inside a response: {raw!r}")
        raw += chunk


def proxied_demo(prog, port, tmp):
    """demo_server with --proxy-protocol behind a balancer, its stderr kept to check."""
    err = open(os.path.join(tmp, "demo.stderr"), "w+")
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", "--proxy-protocol"],
                 stderr=err)
    srv.ready()
    return srv, err


def no_refusals(err):
    err.flush()
    err.seek(0)
    text = err.read()
    check("closed a connection" not in text, f"demo_server refused connections: {text}")


def haproxy_servers(stats, backend):
    """HAProxy's `show servers state` for `backend`: {server name: srv_op_state} (2 = up)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(stats)
        s.sendall(f"show servers state {backend}\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    rows = [l.split() for l in out.decode().splitlines() if l and l[0].isdigit()]
    return {r[3]: int(r[5]) for r in rows if len(r) > 5}


def haproxy_config(tmp, front, backend, defaults=""):
    """Writes and checks (haproxy -c) a tcp-mode HAProxy configuration in `tmp` with a stats
    socket, a frontend on `front` and the backend lines `backend` (`defaults`: more defaults
    lines); returns (configuration path, stats socket path)."""
    stats = os.path.join(tmp, "admin.sock")
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 500
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 20s
    timeout server 20s
{defaults}frontend fe
    bind 127.0.0.1:{front}
    default_backend be
backend be
{backend}""")
    r = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", cfg],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, f"haproxy -c: {r.stdout}{r.stderr}")
    return cfg, stats


def demo_haproxy(prog):
    """A real HAProxy in front (send-proxy-v2 with a CRC32C, and health checks with the
    header): /peer shows each client's real address and port."""
    haproxy = ensure_installed("haproxy", ["haproxy"])
    if haproxy is None:
        sys.exit(SKIP)
    version = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=20).stdout
    print(f"  {version.splitlines()[0] if version else haproxy}", flush=True)
    back, front = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, stats = haproxy_config(tmp, front, f"    server demo 127.0.0.1:{back} send-proxy-v2 "
                                    "proxy-v2-options crc32c check check-send-proxy inter 200ms "
                                    "rise 2 fall 1\n")
        srv, err = proxied_demo(prog, back, tmp)
        lb = None
        try:
            lb = Balancer([haproxy, "-db", "-f", cfg], open(os.path.join(tmp, "haproxy.log"), "w"))
            lb.wait_port(front)
            lb.wait_unix(stats)

            def up():
                # srv_op_state 2: running (its checks pass).
                return haproxy_servers(stats, "be").get("demo") == 2

            # The checks send the header too (a LOCAL one): the server must take them.
            wait_until(up, 20, "HAProxy's health checks to mark the demo server up")
            print("  HAProxy's checks (header included) mark the server up", flush=True)
            through_balancer(front, ["127.0.0.2", "127.0.0.3"])
            time.sleep(0.5)  # a few more checks
            check(up(), f"the server went down: {haproxy_servers(stats, 'be')}")
            no_refusals(err)
            lb.stop(signal.SIGTERM)
            srv.stop()
        finally:
            if lb:
                lb.stop(signal.SIGTERM)
            srv.kill()
        assert_nothing_left()


class SteadyClient:
    """Requests /peer through the balancer until stopped: `keepalive` threads on keep-alive
    connections (reconnecting when a response says Connection: close) and `fresh` threads on
    a new connection per request, each from its own loopback source address. A failure is any
    error, a response that is not 200, or a /peer that is not the client's own ip:port."""

    def __init__(self, front, keepalive=4, fresh=2):
        self.front = front
        self.running = True
        self.lock = threading.Lock()
        self.requests = self.connections = 0
        self.failures = []
        self.threads = [threading.Thread(target=self._keepalive, args=(i,), daemon=True)
                        for i in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh, args=(keepalive + i,), daemon=True)
                         for i in range(fresh)]
        for t in self.threads:
            t.start()

    def _connect(self, n):
        s = socket.socket()
        s.settimeout(10)
        s.bind((f"127.0.0.{2 + n % 200}", 0))
        s.connect(("127.0.0.1", self.front))
        with self.lock:
            self.connections += 1
        return s, "%s:%d" % s.getsockname()

    def _one(self, s, me, close):
        s.sendall(b"GET /peer HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"")
                  + b"\r\n")
        raw = read_response(s)
        head = raw.partition(b"\r\n\r\n")[0]
        check(raw.startswith(b"HTTP/1.1 200 "), f"{raw!r}")
        check(body_of(raw) == me, f"/peer gave {body_of(raw)!r}, the client is {me}")
        with self.lock:
            self.requests += 1
        return re.search(rb"(?im)^connection: *close\r?$", head) is not None

    def _record(self, e):
        with self.lock:
            self.failures.append(f"{time.monotonic():.3f} {e}")

    def _keepalive(self, n):
        while self.running:
            try:
                s, me = self._connect(n)
                with s:
                    while self.running and not self._one(s, me, False):
                        time.sleep(0.01)
            except (AssertionError, OSError) as e:
                self._record(e)
                time.sleep(0.05)

    def _fresh(self, n):
        while self.running:
            try:
                s, me = self._connect(n)
                with s:
                    self._one(s, me, True)
            except (AssertionError, OSError) as e:
                self._record(e)
            time.sleep(0.01)

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(timeout=15)


def demo_rolling_restart(prog):
    """Two demo_server instances behind a real HAProxy (send-proxy-v2, health checks on
    /health), a steady client through it, and each instance in turn stopped with
    --shutdown-delay-ms and started again: no request fails, /peer always names the client,
    and HAProxy takes each instance out during its delay, before it stops accepting.
    HAProxy is set to retry nothing, so a connection routed to a stopped instance would be a
    failure the client sees."""
    haproxy = ensure_installed("haproxy", ["haproxy"])
    if haproxy is None:
        sys.exit(SKIP)
    delay_ms, grace_ms = int(os.environ.get("E2E_SHUTDOWN_DELAY_MS", 1000)), 2000
    ports = {"a": free_port(), "b": free_port()}
    front = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        servers = "".join(
            f"    server {name} 127.0.0.1:{port} send-proxy-v2 check check-send-proxy "
            "inter 100ms fall 2 rise 2\n" for name, port in ports.items())
        cfg, stats = haproxy_config(tmp, front, f"""    balance roundrobin
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host lb
    http-check expect status 200
{servers}""", defaults="    retries 0\n")

        def start(name):
            err = open(os.path.join(tmp, f"{name}.stderr"), "a+")
            srv = Server([prog, "--addr", f"127.0.0.1:{ports[name]}", "--children", "2",
                          "--proxy-protocol", "--shutdown-delay-ms", str(delay_ms),
                          "--grace-ms", str(grace_ms)], stderr=err)
            srv.ready()
            return srv, err

        running, lb, client = {}, None, None
        try:
            for name in ports:
                running[name] = start(name)
            lb = Balancer([haproxy, "-db", "-f", cfg], open(os.path.join(tmp, "haproxy.log"), "w"))
            lb.wait_port(front)
            lb.wait_unix(stats)
            wait_until(lambda: set(haproxy_servers(stats, "be").values()) == {2}, 20,
                       "HAProxy's checks to mark both instances up")
            # HAProxy's view, sampled every 10 ms: when each instance went down and up.
            changes, watching = [], [True]

            def watch():
                last = {}
                while watching[0]:
                    try:
                        now = haproxy_servers(stats, "be")
                    except OSError:
                        continue
                    t = time.monotonic()
                    for name, state in now.items():
                        if last.get(name) != state:
                            changes.append((t, name, state))
                    last = now
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            client = SteadyClient(front)
            began = time.monotonic()
            time.sleep(1)
            rolls = []
            for name in ports:
                srv, err = running.pop(name)
                kids = srv.begin_stop()
                asked = time.monotonic()
                # Not Server.finish: the other instance and HAProxy are this driver's too.
                code = srv.proc.wait(timeout=delay_ms / 1000 + grace_ms / 1000 + 10)
                exited = time.monotonic()
                check(code == 0, f"instance {name} exited with {code}")
                wait_until(lambda: not any(alive(k) for k in kids), 5, f"{name}'s children to go")
                no_refusals(err)
                running[name] = start(name)
                wait_until(lambda: haproxy_servers(stats, "be").get(name) == 2, 20,
                           f"HAProxy to mark {name} up again")
                back = time.monotonic()
                downs = [t for t, n, st in changes if n == name and st != 2 and t >= asked]
                down = downs[0] if downs else None
                rolls.append((name, down and down - asked, exited - asked, down and back - down))
                time.sleep(0.5)
            time.sleep(0.5)
            client.stop()
            watching[0] = False
            watcher.join(timeout=5)
            took = time.monotonic() - began
            print(f"  measure: {client.requests} requests on {client.connections} connections "
                  f"in {took:.1f} s through HAProxy, {len(client.failures)} failed", flush=True)
            for name, down, exited, out in rolls:
                ms = lambda t: "never" if t is None else f"{t * 1000:.0f} ms"
                print(f"  measure: instance {name}: SIGTERM to marked down {ms(down)}, "
                      f"to exit {ms(exited)} (delay {delay_ms} ms); out of rotation {ms(out)}",
                      flush=True)
            check(not client.failures,
                  f"{len(client.failures)} requests failed: {client.failures[:10]}")
            check(client.requests > 100, f"only {client.requests} requests went through")
            for name, down, _, _ in rolls:
                check(down is not None, f"HAProxy never marked {name} down: {changes}")
                check(down < delay_ms / 1000,
                      f"{name} was marked down {down:.3f} s after SIGTERM, after its delay")
            lb.stop(signal.SIGTERM)
            kids = []
            for srv, err in running.values():
                no_refusals(err)
                kids += srv.begin_stop()
            for name, (srv, _) in list(running.items()):
                code = srv.proc.wait(timeout=delay_ms / 1000 + grace_ms / 1000 + 10)
                check(code == 0, f"instance {name} exited with {code}")
                del running[name]
            assert_nothing_left(kids)
        finally:
            if client:
                client.stop()
            if lb:
                lb.stop(signal.SIGTERM)
            for srv, _ in running.values():
                srv.kill()
        assert_nothing_left()


def demo_nginx(prog):
    """nginx's stream module in front with `proxy_protocol on` (version 1)."""
    nginx = ensure_installed("nginx", ["nginx", "libnginx-mod-stream"])
    if nginx is None:
        sys.exit(SKIP)
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=20).stderr
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    if "--with-stream=dynamic" in built:
        if not os.path.exists(module):
            print(f"SKIP: nginx's stream module ({module}, package libnginx-mod-stream) is "
                  "missing", flush=True)
            sys.exit(SKIP)
        load = f"load_module {module};"
    elif "--with-stream" in built:
        load = ""
    else:
        print("SKIP: this nginx has no stream module", flush=True)
        sys.exit(SKIP)
    print(f"  {built.splitlines()[0]}", flush=True)
    back, front = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(f"""{load}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{front};
        proxy_pass 127.0.0.1:{back};
        proxy_protocol on;
    }}
}}
""")
        # -e: the log nginx writes before it reads the configuration (not /var/log/nginx).
        base = [nginx, "-e", os.path.join(tmp, "startup.log"), "-p", tmp, "-c", cfg]
        r = subprocess.run(base + ["-t"], capture_output=True, text=True, timeout=20)
        check(r.returncode == 0, f"nginx -t: {r.stdout}{r.stderr}")
        srv, err = proxied_demo(prog, back, tmp)
        lb = None
        try:
            lb = Balancer(base, open(os.path.join(tmp, "nginx.out"), "w"))
            lb.wait_port(front)
            through_balancer(front, ["127.0.0.2", "127.0.0.3"])
            no_refusals(err)
            lb.stop(signal.SIGQUIT)
            srv.stop()
        finally:
            if lb:
                lb.stop(signal.SIGQUIT)
            srv.kill()
        assert_nothing_left()


def api(prog):
    r = subprocess.run([prog], timeout=60)
    check(r.returncode == 0, f"{prog} exit status {r.returncode}")
    assert_nothing_left()


# ---- TLS ---------------------------------------------------------------------------------------


def make_pki(directory):
    """A CA and two leaves (localhost, other.test) made by openssl req: no key is checked in.
    Returns the CA file and {name: (cert, key)}."""
    def run(*args):
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}")

    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.crt")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=e2e test CA")
    leaves = {}
    for name in ["localhost", "other.test"]:
        key, csr = os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.csr")
        cert, ext = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)
        leaves[name] = (cert, key)
    return ca, leaves


_contexts = {}


def https(port, ca, name, path="/", session=None, headers=""):
    """GET over TLS with Python's ssl module; returns (status line, body, TLS socket). One
    context per CA: a session resumes only through the context that made it."""
    import ssl
    if ca not in _contexts:
        _contexts[ca] = ssl.create_default_context(cafile=ca)
        _contexts[ca].set_alpn_protocols(["http/1.1"])
    ctx = _contexts[ca]
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=name, session=session)
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n{headers}Connection: close\r\n\r\n"
                .encode())
    data = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body, tls


def demo_tls(prog):
    import ssl
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ca, leaves = make_pki(d)
        pairs = []
        for name in ["localhost", "other.test"]:
            cert, key = leaves[name]
            pairs += ["--tls-cert", cert, "--tls-key", key]
        for embed in [[], ["--tls-embed"]]:
            port = free_port()
            srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2", "--reuseport",
                          *pairs, *embed])
            try:
                kids = srv.ready()
                line, body, tls = https(port, ca, "localhost")
                check((line, body) == ("HTTP/1.1 200 OK", b"Hello, World!"),
                      f"{embed}: GET / over TLS gave {line!r} {body!r}")
                check(tls.selected_alpn_protocol() == "http/1.1",
                      f"ALPN {tls.selected_alpn_protocol()!r}")
                # SNI picks the second certificate; verification by name proves which came.
                line, body, _ = https(port, ca, "other.test")
                check(line == "HTTP/1.1 200 OK", f"SNI other.test gave {line!r}")
                # Resumption: every reconnection offers the last session; any child takes it.
                session, resumed, pids = tls.session, 0, set()
                for _ in range(10):
                    line, body, t = https(port, ca, "localhost", "/pid", session)
                    resumed += t.session_reused
                    pids.add(int(body))
                    session = t.session
                check(resumed == 10, f"{resumed}/10 reconnections resumed")
                check(pids <= set(kids), f"/pid gave {pids}, children {kids}")
                print(f"  10/10 resumed, served by {len(pids)} children", flush=True)
                # Plain HTTP on the TLS port: a clear-text 400.
                reply = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                check(reply.startswith(b"HTTP/1.1 400 "), f"plain HTTP got {reply[:40]!r}")
                # A TLS connection cannot be taken over: /upgrade's hijack gets
                # PREFORK_ERR_UNSUPPORTED, which the demo answers 501.
                line, body, _ = https(port, ca, "localhost", "/upgrade", headers="Upgrade: echo\r\n")
                check(line.startswith("HTTP/1.1 501 "), f"/upgrade over TLS gave {line!r} {body!r}")
                if not embed:
                    # A reload's children get the TLS material too.
                    srv.proc.send_signal(signal.SIGHUP)
                    m = srv.expect(r"^reloaded generation=(\d+) children=(\d+(?:,\d+)*)$")
                    fresh = [int(p) for p in m.group(2).split(",")]
                    check(not set(fresh) & set(kids), f"{kids} reloaded to {fresh}")
                    wait_until(lambda: not any(alive(p) for p in kids), 15,
                               "the old generation to exit")
                    pids = {int(https(port, ca, "localhost", "/pid")[1]) for _ in range(10)}
                    check(pids <= set(fresh), f"/pid gave {pids} after the reload to {fresh}")
                try:
                    https(port, ca, "unknown.test")
                    fail("a name no certificate has was accepted")
                except ssl.SSLCertVerificationError:
                    pass
                srv.stop(signal.SIGTERM)
            finally:
                srv.kill()
        # A key that belongs to the other certificate: an error naming it, no child started.
        cert, _ = leaves["localhost"]
        _, other_key = leaves["other.test"]
        port = free_port()
        r = subprocess.run([prog, "--addr", f"127.0.0.1:{port}", "--tls-cert", cert,
                            "--tls-key", other_key], capture_output=True, text=True, timeout=30)
        check(r.returncode == 1, f"exit {r.returncode} with a mismatched key; {r.stderr!r}")
        check(other_key in r.stderr and "does not match" in r.stderr, f"stderr {r.stderr!r}")
        check("started child" not in r.stderr and "ready" not in r.stdout,
              f"a child was started: {r.stderr!r}")
        assert_nothing_left()


# ---- several listeners, Unix sockets, systemd socket activation ---------------------------------


def connect_addr(addr, timeout=10):
    """A connected socket to a listener address as the library writes it."""
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        name = addr[len("unix:"):]
        s.connect("\0" + name[1:] if name.startswith("@") else name)
        return s
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def exchange_at(addr, data, timeout=10):
    """Sends `data` to `addr` and returns what `read_to_close` reads."""
    with connect_addr(addr, timeout) as s:
        s.sendall(data)
        return read_to_close(s)


def bodies_of(raw):
    """The bodies of the responses in `raw`, in order (each with Content-Length)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        m = re.search(rb"\r\nContent-Length: (\d+)", head, re.I)
        n = int(m.group(1)) if m else 0
        out.append(rest[:n].decode())
        raw = rest[n:]
    return out


def get_at(addr, path, prefix=b""):
    return bodies_of(exchange_at(addr, prefix + f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                 "Connection: close\r\n\r\n".encode()))


def answering_children(addr, kids, tries=40):
    """The children that answer /pid on `addr`, checking /local each time. On a shared
    listener the kernel may hand every sequential connection to the same idle child, so once
    one child has answered, /sleeps hold event loops while /pid is asked. The kernel may also
    favour one child for every accept: with one /sleep, the child it favours sleeps and the
    other answers; with two, both sleep and the favoured one, woken first, answers. The tries
    alternate, so each child answers whichever the kernel favours."""
    pids = set()
    for i in range(tries):
        holds = []
        if pids:
            for _ in range(1 + i % 2):
                hold = threading.Thread(target=get_at, args=(addr, "/sleep?ms=200"))
                hold.start()
                holds.append(hold)
                time.sleep(0.05)
        local, pid = get_at(addr, "/local")[0], int(get_at(addr, "/pid")[0])
        check(local == addr, f"/local on {addr} gave {local!r}")
        pids.add(pid)
        for hold in holds:
            hold.join()
        if pids == set(kids):
            break
    return pids


def listeners_line(srv):
    return srv.expect(r"^listeners (.*)$").group(1).split(" ")


def child_env_has_listen(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [v for v in f.read().split(b"\0") if v.startswith(b"LISTEN_")]


def socket_fds(pid):
    """The descriptors of `pid` that are sockets, by number."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:"):
            out[int(fd)] = target
    return out


def demo_listeners(prog):
    """Repeated --addr: two TCP ports, a socket file (with --unix-mode) and an abstract name,
    each served by every child in both listener modes, with keep-alive and pipelining over
    the Unix socket, /local naming each listener and /peer "unix:"; --proxy-protocol applies to
    every --addr; the socket file is gone after the stop."""
    with tempfile.TemporaryDirectory() as d:
        for mode in [[], ["--reuseport"]]:
            path = os.path.join(d, "demo.sock")
            name = f"prefork-e2e-{os.getpid()}-{len(mode)}"
            tcp = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
            want = tcp + [f"unix:{path}", f"unix:@{name}"]
            argv = [prog, "--children", "2", "--unix-mode", "660", *mode]
            for addr in want:
                argv += ["--addr", addr]
            srv = Server(argv)
            try:
                kids = srv.ready()
                got = listeners_line(srv)
                check(got == want, f"{mode}: listeners {got}, expected {want}")
                check(os.stat(path).st_mode & 0o777 == 0o660,
                      f"socket file mode {os.stat(path).st_mode & 0o777:o}")
                for kid in kids:
                    fds = socket_fds(kid)
                    check(all(fd in fds for fd in range(3, 8)),
                          f"child {kid}: sockets at {sorted(fds)}, expected 3..7")
                for addr in want:
                    pids = answering_children(addr, kids)
                    check(pids == set(kids), f"{mode}: on {addr} only {pids} of {kids} answered")
                unix = f"unix:{path}"
                raw = exchange_at(unix, b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
                                  b"GET /defer?ms=20 HTTP/1.1\r\nHost: x\r\n\r\n"
                                  b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                check(bodies_of(raw) == [unix, "body", "deferred 20 ms", "unix:"],
                      f"pipelined over the Unix socket: {raw!r}")
                srv.stop()
                check(not os.path.exists(path), "the socket file outlived the stop")
            finally:
                srv.kill()
        # --proxy-protocol covers every --addr: over the Unix socket the header names the
        # client, as HAProxy in front on the same machine sends it.
        path = os.path.join(d, "proxied.sock")
        port = free_port()
        srv = Server([prog, "--children", "1", "--proxy-protocol",
                      "--addr", f"127.0.0.1:{port}", "--addr", f"unix:{path}"])
        try:
            srv.ready()
            header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n"
            for addr in [f"127.0.0.1:{port}", f"unix:{path}"]:
                got = get_at(addr, "/peer", header)
                check(got == ["203.0.113.7:51234"], f"/peer on {addr} with a header gave {got}")
                check(exchange_at(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b"",
                      f"{addr} answered a connection without a header")
            srv.stop()
        finally:
            srv.kill()
        # A live socket file is refused at once and left alone.
        path = os.path.join(d, "taken.sock")
        with socket.socket(socket.AF_UNIX) as held:
            held.bind(path)
            held.listen()
            r = subprocess.run([prog, "--addr", f"unix:{path}"], capture_output=True, text=True,
                               timeout=30)
        check(r.returncode == 1 and "another process is listening" in r.stderr,
              f"a live socket file: exit {r.returncode}, {r.stderr!r}")
        check(os.path.exists(path), "the live socket's file was removed")
        assert_nothing_left()


def activate(prog, d, extra, addrs=None):
    """demo_server under systemd-socket-activate with a TCP port and a socket file, with
    --addr systemd or (`addrs`) the addresses the passed sockets have; returns (server, tcp
    address, unix address). systemd-socket-activate execs the program on the first
    connection: the master's pid is its pid."""
    port = free_port()
    path = os.path.join(d, "activated.sock")
    tcp = f"127.0.0.1:{port}"
    tool = shutil.which("systemd-socket-activate")
    listen = ["--addr", "systemd"]
    if addrs is not None:
        listen = [a for addr in addrs(tcp, f"unix:{path}") for a in ["--addr", addr]]
    srv = Server([tool, "-l", tcp, "-l", path, "--fdname=web:admin", prog, *listen, *extra],
                 stderr=subprocess.PIPE)
    threading.Thread(target=lambda: [print(f"  ! {l.rstrip()}", flush=True)
                                     for l in srv.proc.stderr], daemon=True).start()
    wait_until(lambda: os.path.exists(path), 20, "systemd-socket-activate to listen")
    return srv, tcp, f"unix:{path}"


def demo_systemd(prog):
    """Socket activation with Debian's systemd-socket-activate: both passed sockets served by
    every child (the first connection, which started the program, too), the variables kept
    from the children, a killed child replaced with the same sockets, a clean stop that
    leaves the socket file to its owner, and nothing left behind."""
    with tempfile.TemporaryDirectory() as d:
        srv, tcp, unix = activate(prog, d, ["--children", "2"])
        try:
            # This connection wakes systemd-socket-activate, which then execs the demo; it
            # waits in the queue until a child takes it.
            first = get_at(tcp, "/local")
            check(first == [tcp], f"the first connection got {first}")
            kids = srv.ready()
            got = listeners_line(srv)
            check(got == [tcp, unix], f"listeners {got}")
            for kid in kids:
                check(child_env_has_listen(kid) == [],
                      f"child {kid} sees {child_env_has_listen(kid)}")
                fds = socket_fds(kid)
                check(sorted(fds)[:3] == [3, 4, 5], f"child {kid} sockets at {sorted(fds)}")
            for addr in [tcp, unix]:
                check(get_at(addr, "/local") == [addr], f"/local on {addr}")
            victim = kids[0]
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: len([p for p in children_of(srv.proc.pid) if alive(p)]) == 2
                       and victim not in children_of(srv.proc.pid), 20, "a replacement")
            fresh = [p for p in children_of(srv.proc.pid) if p != victim]
            pids = answering_children(tcp, fresh) | answering_children(unix, fresh)
            check(pids >= set(fresh), f"served by {pids}, children {fresh}")
            srv.stop()
            check(os.path.exists(unix[5:]), "the master removed systemd's socket file")
        finally:
            srv.kill()
        # Without "systemd" the passed sockets serve the listeners of their address instead
        # of a bind (which would find them taken), here the TCP one only: the socket file,
        # which matches no --addr, is closed and the abstract name bound.
        os.unlink(unix[5:])
        name = f"prefork-e2e-sa-{os.getpid()}"
        srv, tcp, unix = activate(prog, d, ["--children", "1"],
                                  lambda tcp, unix: [tcp, f"unix:@{name}"])
        try:
            check(get_at(tcp, "/local") == [tcp], "the first connection over the adopted port")
            srv.ready()
            check(listeners_line(srv) == [tcp, f"unix:@{name}"], f"listeners {srv.seen}")
            check(get_at(f"unix:@{name}", "/local") == [f"unix:@{name}"], "the abstract socket")
            srv.stop()
        finally:
            srv.kill()
    assert_nothing_left()


def demo_systemd_errors(prog):
    """The variables wrong or stale: each is an error that says so, and no child starts."""
    sh = shutil.which("sh")
    cases = [
        ("", "LISTEN_PID and LISTEN_FDS are not set"),
        ("LISTEN_PID=1 LISTEN_FDS=1", "not this process"),
        ("LISTEN_PID=$$ LISTEN_FDS=x", "is not a positive count"),
        ("LISTEN_PID=$$ LISTEN_FDS=0", "is not a positive count"),
        ("LISTEN_PID=pid LISTEN_FDS=1", "is not a process id"),
        ("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b", "names 2 descriptors"),
        # fd 3 open on a file: no listening socket.
        ("LISTEN_PID=$$ LISTEN_FDS=1", "is not a listening stream socket"),
    ]
    for env, needle in cases:
        script = (f"unset LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; {env} exec \"$0\" "
                  "--addr systemd --children 1 3</dev/null")
        r = subprocess.run([sh, "-c", script, prog], capture_output=True, text=True, timeout=30)
        check(r.returncode == 1 and needle in r.stderr,
              f"{env!r}: exit {r.returncode}, stderr {r.stderr!r}, expected {needle!r}")
        check("ready" not in r.stdout and "started child" not in r.stderr,
              f"{env!r}: a child was started: {r.stderr!r}")
    assert_nothing_left()


SCENARIOS = {f.__name__: f for f in [demo_routes, demo_routes_batch, demo_sigint, demo_crash,
                                      demo_reuseport, demo_reload, demo_binary_upgrade,
                                      demo_flags, demo_bind_error, demo_user, demo_limits,
                                      demo_tls, demo_defer, demo_upgrade_echo, hello, hooks,
                                      hooks_master_death, server, api, abi_v0_1, serve_echo,
                                      serve_echo_master_death, demo_proxy, demo_haproxy,
                                      demo_nginx, demo_listeners, demo_systemd,
                                      demo_systemd_errors, demo_rolling_restart]}


# Tools a scenario needs: installed first, before this process becomes a subreaper (so that no
# process a package's installation leaves running is taken for one of ours), or it is skipped.
NEEDS = {
    "demo_haproxy": [("haproxy", ["haproxy"])],
    "demo_rolling_restart": [("haproxy", ["haproxy"])],
    "demo_nginx": [("nginx", ["nginx", "libnginx-mod-stream"])],
    "demo_systemd": [("systemd-socket-activate", ["systemd"])],
}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: e2e.py {{{'|'.join(SCENARIOS)}}} PROGRAM")
    name, prog = sys.argv[1], sys.argv[2]
    for command, packages in NEEDS.get(name, []):
        if ensure_installed(command, packages) is None:
            sys.exit(SKIP)
    become_subreaper()
    try:
        SCENARIOS[name](prog)
    except AssertionError as e:
        print(f"FAIL {name}: {e}", flush=True)
        for pid in children_of(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        sys.exit(1)
    print(f"PASS {name}")


if __name__ == "__main__":
    main()
