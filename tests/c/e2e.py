#!/usr/bin/env python3
"""End-to-end tests of the C programs over real sockets on 127.0.0.1.

    python3 e2e.py SCENARIO PROGRAM [ARGS...]

Each scenario starts the program (master and children), talks HTTP to it, stops it by PID and
proves nothing is left behind: this driver makes itself a child subreaper, so any process the
master failed to reap is re-parented here and detected. Every wait is bounded.
"""

import ctypes
import http.client
import os
import queue
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
READY = re.compile(r"^ready pid=(\d+) children=(\d+(?:,\d+)*)$")


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
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
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

    def __init__(self, argv):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
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


def demo_routes(prog):
    port = free_port()
    srv = Server([prog, "--addr", f"127.0.0.1:{port}", "--children", "2"])
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


def demo_upgrade(prog):
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


def demo_flags(prog):
    bad = [["--children", "x"], ["--bogus"], ["--network", "udp"], ["--addr"],
           ["--children", "5000"], ["--header-timeout-ms", "0"], ["--grace-ms", "-5"],
           ["--recover-threshold", "many"]]
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
        # The orphans were re-parented to this subreaper: reap them and check they exited 0.
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
    finally:
        for pid in children_of(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        srv.kill()


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


def api(prog):
    r = subprocess.run([prog], timeout=60)
    check(r.returncode == 0, f"{prog} exit status {r.returncode}")
    assert_nothing_left()


SCENARIOS = {f.__name__: f for f in [demo_routes, demo_sigint, demo_crash, demo_reuseport,
                                      demo_flags, demo_bind_error, demo_limits, demo_defer,
                                      demo_upgrade, hello, hooks, hooks_master_death, server,
                                      api, abi_v0_1]}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: e2e.py {{{'|'.join(SCENARIOS)}}} PROGRAM")
    become_subreaper()
    name, prog = sys.argv[1], sys.argv[2]
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
