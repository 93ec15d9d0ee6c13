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
        kids = children_of(self.proc.pid)
        self.proc.send_signal(sig)
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
        srv.stop(signal.SIGTERM)
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
        srv.stop()
    finally:
        srv.kill()


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


def https(port, ca, name, path="/", session=None):
    """GET over TLS with Python's ssl module; returns (status line, body, TLS socket). One
    context per CA: a session resumes only through the context that made it."""
    import ssl
    if ca not in _contexts:
        _contexts[ca] = ssl.create_default_context(cafile=ca)
        _contexts[ca].set_alpn_protocols(["http/1.1"])
    ctx = _contexts[ca]
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=name, session=session)
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
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


SCENARIOS = {f.__name__: f for f in [demo_routes, demo_sigint, demo_crash, demo_reuseport,
                                      demo_flags, demo_bind_error, demo_limits, demo_tls, hello,
                                      hooks, hooks_master_death, server, api, abi_v0_1]}


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
