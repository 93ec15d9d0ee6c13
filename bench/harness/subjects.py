"""Subjects (the servers under test): discovery, build, start, readiness and stop.

Each subject is a directory bench/subjects/NAME with a subject.json (what it supports) and a
ctl script (build / version / argv; see bench/subjects/lib.sh). The harness runs the command
that `ctl argv` prints directly (no shell in between), so the pid it starts is the master.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import httpc, procfs

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
BUILD = BENCH / ".build"
# Servers started and not yet stopped: bench/run stops them if it is interrupted.
ACTIVE = set()
READY_RE = re.compile(r"^ready pid=(\d+) children=([\d,]*)\s*$")


# The tree our subjects are built from: the working tree, or a snapshot of a commit (--rev).
SOURCE = REPO


def use_revision(rev, log):
    """Exports `rev` (read-only for git: git archive) to .build/src-SHA and builds ours from
    there, so a benchmark names the exact commit it measured while others edit the tree."""
    global SOURCE
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    dest = BUILD / f"src-{sha[:12]}"
    if not dest.is_dir():
        tmp = BUILD / f"src-{sha[:12]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"bench/run: git archive {rev} failed")
        tmp.rename(dest)
    SOURCE = dest
    os.environ["SOURCE_REV"] = sha[:12]
    log(f"building ours from {rev} = {sha[:12]} (snapshot {dest.relative_to(BENCH)})")
    return sha


def ctl_env():
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(REPO / "target-bench"))
    env.update(BENCH_DIR=str(BENCH), REPO_DIR=str(SOURCE), BUILD_DIR=str(BUILD))
    cargo_bin = Path.home() / ".cargo" / "bin"
    if cargo_bin.is_dir():
        env["PATH"] = f"{cargo_bin}:{env['PATH']}"
    return env


@dataclass
class Subject:
    name: str
    dir: Path
    title: str
    group: str  # "ours" or "peer"
    ready_line: bool
    routes: dict
    handler_threads: bool
    order: int
    note: str = ""
    # What this subject takes part in: None is the grid and every scenario; a list names
    # scenarios, and "grid" for the grid.
    scenarios: list | None = None
    # The server is one process that serves on `children` cores itself (net/http with
    # GOMAXPROCS): no child processes to wait for.
    one_process: bool = False
    # It serves HTTPS when started with --tls-cert/--tls-key (the TLS scenarios).
    tls: bool = False
    status: str = "unbuilt"  # unbuilt | ok | skip | error
    reason: str = ""
    version: str = ""
    response_bytes: int | None = None

    @property
    def ok(self):
        return self.status == "ok"

    def takes_part(self, what):
        """True when the subject runs in `what`: "grid" or a scenario's name."""
        return self.scenarios is None or what in self.scenarios

    def ctl(self, *args, env=None, timeout=900, **kw):
        return subprocess.run(
            [str(self.dir / "ctl"), *args],
            env=env or ctl_env(),
            timeout=timeout,
            text=True,
            **kw,
        )


def load_subjects():
    out = []
    for meta in sorted((BENCH / "subjects").glob("*/subject.json")):
        d = json.loads(meta.read_text())
        out.append(
            Subject(
                name=meta.parent.name,
                dir=meta.parent,
                title=d["title"],
                group=d["group"],
                ready_line=d["ready_line"],
                routes=d.get("routes", {}),
                handler_threads=d.get("handler_threads", False),
                order=d.get("order", 99),
                note=d.get("ready_line_note", ""),
                scenarios=d.get("scenarios"),
                one_process=d.get("one_process", False),
                tls=d.get("tls", False),
            )
        )
    return sorted(out, key=lambda s: s.order)


def build(subject, log):
    """Builds one subject; sets status/reason/version. Output goes to .build/logs/NAME.log."""
    logs = BUILD / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{subject.name}.build.log"
    t0 = time.monotonic()
    with open(path, "w") as f:
        try:
            r = subject.ctl("build", stdout=f, stderr=subprocess.STDOUT)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = -1
    text = path.read_text(errors="replace").strip().splitlines()
    if rc == 0:
        subject.status = "ok"
        v = subject.ctl("version", capture_output=True)
        subject.version = v.stdout.strip() if v.returncode == 0 else "unknown"
        log(f"built {subject.name} in {time.monotonic() - t0:.0f} s: {subject.version}")
    elif rc == 3:
        subject.status = "skip"
        skips = [line[6:] for line in text if line.startswith("skip: ")]
        subject.reason = skips[-1] if skips else "not available"
        log(f"skipping {subject.name}: {subject.reason}")
    else:
        subject.status = "error"
        tail = " | ".join(text[-4:]) if text else "no output"
        subject.reason = f"build failed (exit {rc}; log {path.relative_to(BENCH)}): {tail}"
        log(f"skipping {subject.name}: {subject.reason}")


class StartError(Exception):
    pass


@dataclass
class StopResult:
    exit_code: int | None
    forced: bool  # the master needed SIGKILL
    leftovers: list = field(default_factory=list)  # pids still running after SIGKILL
    was_running: bool = True  # False: the master had exited before stop() (or was killed by us)

    def problems(self):
        out = []
        if self.forced:
            out.append("master ignored SIGTERM for the grace period and was killed")
        elif not self.was_running:
            pass  # whoever ended it (a scenario's kill -9, a crash) reported it already
        elif self.exit_code not in (0, None):
            out.append(f"master exited {self.exit_code} on SIGTERM")
        if self.leftovers:
            out.append(f"processes left after stop: {self.leftovers}")
        return out


class Server:
    """A running subject. Use start() then stop(); stop() proves nothing is left."""

    def __init__(self, subject, port, children, pin=None, extra=(), tls=None):
        self.subject = subject
        self.port = port
        self.children = children
        self.pin = pin
        self.extra = list(extra)
        # (certificate file, key file): serve HTTPS; readiness is then polled over TLS.
        self.tls = tls
        self.proc = None
        self.run_dir = None
        self.lines = []
        self.ready_at = None  # monotonic time the ready line was read
        self.ready_children = []
        self.started_at = None
        self.serving_at = None  # monotonic time GET / first answered Hello, World!
        self._ready = threading.Event()
        self._reader = None

    @property
    def pid(self):
        return self.proc.pid

    def argv(self):
        args = ["--addr", f"127.0.0.1:{self.port}", "--children", str(self.children), *self.extra]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        env = ctl_env()
        env["RUN_DIR"] = self.run_dir
        r = self.subject.ctl("argv", *args, env=env, capture_output=True, timeout=30)
        if r.returncode != 0:
            raise StartError(f"ctl argv failed: {r.stderr.strip()}")
        lines = r.stdout.splitlines()
        run_env = dict(os.environ)
        while lines and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", lines[0]):
            k, _, v = lines.pop(0).partition("=")
            run_env[k] = v
        if not lines:
            raise StartError("ctl argv printed no command")
        return lines, run_env

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = READY_RE.match(line)
            if m and not self._ready.is_set():
                self.ready_at = time.monotonic()
                self.ready_children = [int(p) for p in m.group(2).split(",") if p]
                self._ready.set()

    def start(self, timeout=20.0):
        """Starts the server and waits until it is ready: its ready line (if it prints one),
        GET / answering "Hello, World!" and `children` child processes. Returns self."""
        if port_in_use(self.port):
            raise StartError(f"port {self.port} is already in use")
        self.run_dir = tempfile.mkdtemp(prefix=f"bench-{self.subject.name}-")
        argv, env = self.argv()
        if self.pin is not None:
            argv = ["taskset", "-c", str(self.pin), *argv]
        stderr = open(os.path.join(self.run_dir, "stderr.log"), "w")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            env=env, text=True, start_new_session=True,
        )
        stderr.close()
        ACTIVE.add(self)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except StartError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = self.started_at + timeout
        if self.subject.ready_line:
            while not self._ready.wait(0.05):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise StartError(f"no ready line within {timeout:.0f} s{self._stderr_tail()}")
            self._check_alive()
        self.serving_at = httpc.wait_hello(self.port, max(0.1, deadline - time.monotonic()),
                                           tls=bool(self.tls))
        if self.serving_at is None:
            self._check_alive()
            raise StartError(f"GET / did not answer Hello, World! within {timeout:.0f} s{self._stderr_tail()}")
        while len(procfs.descendants(self.pid)) < (0 if self.subject.one_process else self.children):
            self._check_alive()
            if time.monotonic() > deadline:
                raise StartError(
                    f"expected {self.children} children, found {procfs.descendants(self.pid)}"
                )
            time.sleep(0.001)

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise StartError(f"exited with status {self.proc.returncode} while starting{self._stderr_tail()}")

    def _stderr_tail(self):
        try:
            text = Path(self.run_dir, "stderr.log").read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"; stderr: {' | '.join(text.splitlines()[-3:])}" if text else ""

    def tree(self):
        """{pid: start time} of the master and all its descendants, now."""
        return procfs.identity([self.pid, *procfs.descendants(self.pid)])

    def child_pids(self):
        return procfs.descendants(self.pid)

    def stop(self, grace=5.0):
        """SIGTERM to the master, SIGKILL after `grace`; then every process of the tree must be
        gone (stragglers get SIGKILL by pid and count as leftovers)."""
        was_running = self.proc.poll() is None
        ident = self.tree() if was_running else {}
        others = {p: s for p, s in ident.items() if p != self.pid}
        forced = False
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                forced = True
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        left = procfs.wait_gone(others, grace)
        for pid, st in left.items():
            procfs.kill_if_ours(pid, st)
        left = procfs.wait_gone(left, 2.0)
        if self._reader:
            self._reader.join(2.0)
        if self.proc.stdout:
            self.proc.stdout.close()
        result = StopResult(self.proc.returncode, forced, sorted(left), was_running)
        ACTIVE.discard(self)
        if self.run_dir:
            self._keep_logs()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return result


    def _keep_logs(self):
        """Keeps what the server wrote to stderr (and nginx's error.log) in .build/logs/servers."""
        dest = BUILD / "logs" / "servers"
        for log in Path(self.run_dir).glob("*.log"):
            if log.stat().st_size:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, dest / f"{self.subject.name}-{self.pid}-{log.name}")


def port_in_use(port):
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def response_size(port):
    """Bytes of the whole response to GET / (head and body): servers differ in the headers
    they send, and bytes on the wire are part of what each request costs."""
    _, head, body = httpc.get(port, "/")
    return len(head) + len(body)
