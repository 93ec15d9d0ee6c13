"""Extra scenarios of issue 6: blocking handler, memory, start-up, respawn, master death.
Each runs on the subjects that support it and says which it skipped and why."""

import errno
import os
import selectors
import signal
import socket
import statistics
import time

from . import httpc, procfs, tls, wrk
from .grid import cpu_us_per_request
from .subjects import Server, StartError

SLEEP_MS = 10
BLOCKING_CONNS = 256
BLOCKING_BOUND = BLOCKING_CONNS * 1000 // SLEEP_MS  # 25,600 req/s: every connection always waiting
ALL = ["blocking", "memory", "ready", "respawn", "master-death", *tls.ALL]


def _start(s, port, children, log, problems, extra=()):
    try:
        return Server(s, port, children, extra=extra).start()
    except StartError as e:
        problems.append(f"{s.name}: did not start: {e}")
        log(f"  {s.name}: did not start: {e}")
        return None


def _stop(srv, problems):
    for p in srv.stop().problems():
        problems.append(f"{srv.subject.name}: {p}")


def blocking(subjects, ports, opts, log):
    """A handler that sleeps 10 ms, 256 connections, two children: the bound is 25,600 req/s.
    Our subjects run with --handler-threads; fasthttp blocks one goroutine per connection."""
    out = dict(bound=BLOCKING_BOUND, handler_threads=opts.handler_threads, seconds=opts.seconds,
               rows=[], skipped=[], problems=[])
    for s in subjects:
        if "sleep" not in s.routes:
            out["skipped"].append(f"{s.name}: no sleeping route")
            continue
        extra = ["--handler-threads", str(opts.handler_threads)] if s.handler_threads else []
        srv = _start(s, ports[s.name], 2, log, out["problems"], extra)
        if not srv:
            continue
        path = s.routes["sleep"].format(ms=SLEEP_MS)
        try:
            wrk.run(srv.port, path=path, threads=2, conns=BLOCKING_CONNS, seconds=1, latency=False)
            ident = srv.tree()
            before, _ = procfs.total_cpu_ticks(ident)
            res = wrk.run(srv.port, path=path, threads=2, conns=BLOCKING_CONNS, seconds=opts.seconds)
            after, missing = procfs.total_cpu_ticks(ident)
            row = dict(subject=s.name, extra=" ".join(extra), **res.to_dict(),
                       cpu_us_per_req=cpu_us_per_request(after - before, res.requests))
            row["of_bound"] = res.rps / BLOCKING_BOUND
            if missing:
                row["valid"] = False
                row["failure"] = f"server processes exited during the run: {missing}"
            out["rows"].append(row)
            log(f"  blocking {s.name}: {res.rps:,.0f} req/s ({row['of_bound']:.2f} of the bound)"
                + ("" if row["valid"] else f" INVALID {res.failure or res.errors}"))
        finally:
            _stop(srv, out["problems"])
    return out


def hold_connections(port, n, batch=250, batch_timeout=15.0):
    """Opens n keep-alive connections, each having completed one GET /, and keeps them open.
    Returns (sockets, failures). Batches keep the listen backlog from overflowing."""
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    held, failed = [], 0
    sel = selectors.DefaultSelector()
    try:
        for first in range(0, n, batch):
            pending = {}
            for _ in range(min(batch, n - first)):
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    failed += 1
                    continue
                sel.register(s, selectors.EVENT_WRITE, "connect")
                pending[s] = b""
            deadline = time.monotonic() + batch_timeout
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    s = key.fileobj
                    try:
                        if key.data == "connect":
                            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                                raise OSError("connect failed")
                            s.send(req)
                            sel.modify(s, selectors.EVENT_READ, "read")
                            continue
                        data = s.recv(4096)
                        if not data:
                            raise OSError("closed by the server")
                        pending[s] += data
                        if pending[s].endswith(httpc.HELLO):
                            sel.unregister(s)
                            del pending[s]
                            held.append(s)
                    except OSError:
                        sel.unregister(s)
                        del pending[s]
                        s.close()
                        failed += 1
            for s in pending:
                sel.unregister(s)
                s.close()
                failed += 1
    finally:
        sel.close()
    return held, failed


def count_closed(socks):
    """How many of the sockets the server has closed (EOF or reset pending)."""
    closed = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def memory(subjects, ports, opts, log):
    """RSS of an idle child (one child, after one request) and the RSS it adds per idle
    keep-alive connection with opts.idle_conns connections open."""
    out = dict(conns=opts.idle_conns, rows=[], skipped=[], problems=[])
    for s in subjects:
        srv = _start(s, ports[s.name], 1, log, out["problems"])
        if not srv:
            continue
        held = []
        try:
            kids = srv.child_pids()
            if len(kids) != 1:
                out["problems"].append(f"{s.name}: expected one child, found {kids}")
                continue
            child = kids[0]
            httpc.get(srv.port, "/")
            time.sleep(0.3)
            idle = procfs.rss_kib(child)
            master = procfs.rss_kib(srv.pid)
            held, failed = hold_connections(srv.port, opts.idle_conns)
            time.sleep(0.5)
            loaded = procfs.rss_kib(child)
            closed = count_closed(held)
            open_ = len(held) - closed
            row = dict(subject=s.name, idle_child_kib=idle, master_kib=master, held=open_,
                       failed=failed + closed, loaded_child_kib=loaded,
                       per_conn_bytes=(loaded - idle) * 1024 / open_ if open_ else None)
            out["rows"].append(row)
            if closed:
                out["problems"].append(f"{s.name}: the server closed {closed} of the idle keep-alive connections")
            log(f"  memory {s.name}: idle child {idle} KiB, master {master} KiB, "
                f"{open_} conns open ({failed} failed, {closed} closed by the server) -> {loaded} KiB"
                + (f", {row['per_conn_bytes']:.0f} B/conn" if open_ else ""))
        finally:
            for sock in held:
                sock.close()
            _stop(srv, out["problems"])
    return out


def ready(subjects, ports, opts, log):
    """Start to ready with two children: the ready line (subjects that print it) and the first
    "Hello, World!" with both children present; median of opts.repeats starts."""
    out = dict(repeats=opts.repeats, rows=[], skipped=[], problems=[])
    for s in subjects:
        line_ms, serving_ms = [], []
        for _ in range(opts.repeats):
            srv = _start(s, ports[s.name], 2, log, out["problems"])
            if not srv:
                break
            if srv.ready_at is not None:
                line_ms.append((srv.ready_at - srv.started_at) * 1e3)
            serving_ms.append((srv.serving_at - srv.started_at) * 1e3)
            _stop(srv, out["problems"])
        if not serving_ms:
            continue
        row = dict(subject=s.name, ready_line_ms=line_ms, serving_ms=serving_ms,
                   ready_line_median=statistics.median(line_ms) if line_ms else None,
                   serving_median=statistics.median(serving_ms), note=s.note)
        out["rows"].append(row)
        log(f"  ready {s.name}: line {fmt_ms(row['ready_line_median'])}, "
            f"serving {fmt_ms(row['serving_median'])}")
    return out


def respawn(subjects, ports, opts, log):
    """kill -9 of the only child, then GET /pid on new connections until another pid answers.
    A fresh server per repeat, so no recover threshold is ever reached."""
    out = dict(repeats=opts.repeats, rows=[], skipped=[], problems=[])
    for s in subjects:
        if "pid" not in s.routes:
            out["skipped"].append(f"{s.name}: no /pid route")
            continue
        times = []
        for _ in range(opts.repeats):
            srv = _start(s, ports[s.name], 1, log, out["problems"])
            if not srv:
                break
            try:
                t = _respawn_once(srv, s.routes["pid"], out["problems"])
                if t is not None:
                    times.append(t)
            finally:
                _stop(srv, out["problems"])
        if times:
            out["rows"].append(dict(subject=s.name, ms=times, median=statistics.median(times)))
            log(f"  respawn {s.name}: {fmt_ms(statistics.median(times))} (runs {fmt_list(times)})")
    return out


def _respawn_once(srv, path, problems, timeout=5.0):
    name = srv.subject.name
    status, _, body = httpc.get(srv.port, path)
    old = int(body)
    if status != 200 or old not in srv.child_pids():
        problems.append(f"{name}: /pid answered {status} {body!r}, not one of {srv.child_pids()}")
        return None
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            status, _, body = httpc.get(srv.port, path, timeout=max(0.01, deadline - time.monotonic()))
            if status == 200 and int(body) != old:
                return (time.monotonic() - t0) * 1e3
        except (OSError, httpc.HttpError, ValueError):
            pass
        time.sleep(0.0002)
    problems.append(f"{name}: no new child answered within {timeout:.0f} s of kill -9")
    return None


def master_death(subjects, ports, opts, log, timeout=3.0):
    """kill -9 of the master (two children), then poll /proc until the last child exited.
    Children that outlive the timeout are killed by pid and reported."""
    out = dict(repeats=opts.repeats, timeout_s=timeout, rows=[], skipped=[], problems=[])
    for s in subjects:
        times, survived = [], 0
        for _ in range(opts.repeats):
            srv = _start(s, ports[s.name], 2, log, out["problems"])
            if not srv:
                break
            kids = procfs.identity(srv.child_pids())
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGKILL)
            srv.proc.wait()
            left = dict(kids)
            deadline = t0 + timeout
            while left and time.monotonic() < deadline:
                for pid in list(left):
                    procfs.reap_if_child(pid)  # orphans are re-parented to us (subreaper)
                    if not procfs.is_running(pid, left[pid]):
                        del left[pid]
                if left:
                    time.sleep(0.0002)
            if left:
                survived += 1
                for pid, st in left.items():
                    procfs.kill_if_ours(pid, st)
                rest = procfs.wait_gone(left, 2.0)
                if rest:
                    out["problems"].append(f"{s.name}: children {sorted(rest)} survived SIGKILL")
            else:
                times.append((time.monotonic() - t0) * 1e3)
            _stop(srv, out["problems"])
        out["rows"].append(dict(subject=s.name, ms=times, survived=survived,
                                median=statistics.median(times) if times else None))
        log(f"  master death {s.name}: "
            + (f"{fmt_ms(statistics.median(times))} (runs {fmt_list(times)})" if times else "")
            + (f" children alive after {timeout:.0f} s in {survived} run(s)" if survived else ""))
    return out


def fmt_ms(v):
    return "n/a" if v is None else f"{v:.1f} ms"


def fmt_list(vs):
    return ", ".join(f"{v:.1f}" for v in vs)


RUNNERS = {
    "blocking": blocking,
    "memory": memory,
    "ready": ready,
    "respawn": respawn,
    "master-death": master_death,
    **tls.RUNNERS,
}
