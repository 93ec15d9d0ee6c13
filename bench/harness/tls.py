"""The TLS scenarios of issue 16 (item 10): HTTPS with an ECDSA P-256 certificate the harness
makes with openssl, TLS 1.3, the X25519 key exchange.

- `tls`: one child pinned to core 1, the client pinned to core 0 (the split configuration), in
  rounds like the grid (subjects interleaved, order reversed every round, one server start per
  round and subject): keep-alive requests at depth 1 and 16 (wrk over https, 64 connections),
  then a new connection per request with a full handshake, then with a resumed one (tlsload).
  Server CPU per request or per handshake is read from /proc around each run.
- `tls-resume`: four children; one client reconnects 200 times with its latest ticket
  (tlsload reconnect): how many handshakes resumed, and how many children served them.
- `tls-memory`: one child; RSS added per idle TLS keep-alive connection, 10,000 held, each
  after its handshake and one GET / (tlsload hold).
"""

import contextlib
import json
import selectors
import subprocess
import time

from . import httpc, procfs, wrk
from .grid import around, cpu_us_per_request
from .subjects import BENCH, BUILD, Server, StartError

ALL = ["tls", "tls-resume", "tls-memory"]
SERVER_CORE, CLIENT_CORE = 1, 0
KEEPALIVE_CONNS = 64
HANDSHAKE_WORKERS = 16
RECONNECTS = 200
RESUME_CHILDREN = 4
# (cell, what its rate counts): the cells of the `tls` scenario in the order they run.
CELLS = [("keep-alive d1", "req/s"), ("keep-alive d16", "req/s"),
         ("full handshake", "handshakes/s"), ("resumed handshake", "handshakes/s")]
# A resumed cell whose handshakes did not resume measured something else.
MIN_RESUMED = 0.95


def prepare(log):
    """The certificate and key (ECDSA P-256, PKCS#8) and the tlsload client, in .build/tls."""
    d = BUILD / "tls"
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    client = BUILD / "tlsload"
    subprocess.run(["go", "build", "-trimpath", "-o", str(client), "."], cwd=BENCH / "tlsload",
                   check=True, timeout=600)
    log(f"  TLS: ECDSA P-256 certificate in {d.relative_to(BENCH)}, client {client.relative_to(BENCH)}")
    return (cert, key), client


def tlsload(client, mode, port, *args, pin=None, timeout=60):
    """One tlsload run; returns its JSON answer, or {"failure": why}."""
    cmd = [str(client), mode, "-addr", f"127.0.0.1:{port}", *map(str, args)]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={"GOMAXPROCS": "1", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        return {"failure": f"tlsload {mode} killed after {timeout} s"}
    if p.returncode != 0:
        return {"failure": f"tlsload {mode} exited {p.returncode}: {p.stderr.strip()[-200:]}"}
    return json.loads(p.stdout)


class _Handshakes:
    """tlsload rate's answer as around() wants it: the run's duration in `.seconds`."""

    def __init__(self, answer):
        self.answer = answer
        self.seconds = answer.get("seconds", 0)


def _keepalive(srv, depth, seconds):
    res, a = around(srv, lambda: wrk.run(srv.port, threads=1, conns=KEEPALIVE_CONNS, seconds=seconds,
                                         depth=depth, latency=False, pin=CLIENT_CORE, tls=True))
    return dict(rate=res.rps, count=res.requests, valid=res.valid,
                failure=res.failure or (f"socket errors {res.errors}" if res.error_count else ""),
                cpu_us=cpu_us_per_request(a.ticks, res.requests), missing=a.missing,
                client_cpu_s=a.client_cpu_s, other_cores=a.other_cores, raw=res.raw)


def _handshakes(srv, client, resume, seconds):
    args = ["-seconds", seconds, "-workers", HANDSHAKE_WORKERS] + (["-resume"] if resume else [])
    res, a = around(srv, lambda: _Handshakes(tlsload(client, "rate", srv.port, *args, pin=CLIENT_CORE,
                                                     timeout=seconds + 15)))
    ans = res.answer
    n = ans.get("handshakes", 0)
    failure = ans.get("failure", "")
    if not failure and ans.get("errors"):
        failure = f"{ans['errors']} failed connections (first: {ans.get('first_error')})"
    resumed = ans.get("resumed", 0) / n if n else 0
    if not failure and resume and resumed < MIN_RESUMED:
        failure = f"only {resumed:.2%} of the handshakes resumed"
    if not failure and not resume and ans.get("resumed"):
        failure = f"{ans['resumed']} handshakes resumed in the full-handshake cell"
    return dict(rate=ans.get("handshakes_per_s"), count=n, resumed_share=resumed, valid=not failure and n > 0,
                failure=failure, cpu_us=cpu_us_per_request(a.ticks, n), missing=a.missing,
                client_cpu_s=a.client_cpu_s, other_cores=a.other_cores, raw=ans)


def load(subjects, ports, opts, log):
    """The `tls` scenario: per round, every subject, every cell of CELLS."""
    out = dict(rounds=opts.rounds, seconds=opts.tls_seconds, conns=KEEPALIVE_CONNS,
               workers=HANDSHAKE_WORKERS, runs=[], skipped=[], problems=[])
    subjects, certs, client = _setup(subjects, out, log)
    for rnd in range(1, opts.rounds + 1):
        order = subjects if rnd % 2 else subjects[::-1]
        cells = CELLS if rnd % 2 else CELLS[::-1]
        for s in order:
            with _running(s, ports[s.name], 1, certs, out["problems"], f"round {rnd} {s.name}",
                          pin=SERVER_CORE) as srv:
                if not srv:
                    continue
                if opts.warmup:
                    wrk.run(srv.port, threads=1, conns=KEEPALIVE_CONNS, seconds=opts.warmup, latency=False,
                            pin=CLIENT_CORE, tls=True)
                for cell, unit in cells:
                    if cell.startswith("keep-alive"):
                        rec = _keepalive(srv, int(cell.rsplit("d", 1)[1]), opts.tls_seconds)
                    else:
                        rec = _handshakes(srv, client, cell.startswith("resumed"), opts.tls_seconds)
                    if rec.pop("missing"):
                        rec.update(valid=False, failure="server processes exited during the run")
                    out["runs"].append(dict(round=rnd, subject=s.name, cell=cell, unit=unit, **rec))
                    log(f"  tls r{rnd} {cell} {s.name}: {_describe(rec, unit)}")
    return out


def _describe(rec, unit):
    if not rec["valid"]:
        return f"INVALID ({rec['failure']})"
    txt = f"{rec['rate']:,.0f} {unit}, {rec['cpu_us']:.1f} us server CPU each"
    if rec.get("other_cores") is not None:
        txt += f", other load {rec['other_cores']:.2f} cores"
    return txt


def _setup(subjects, out, log):
    """The subjects that serve TLS (the others are listed as skipped), the certificate files
    and the client: (subjects, certs, client)."""
    out["skipped"] += [f"{s.name}: no TLS mode" for s in subjects if not s.tls]
    subjects = [s for s in subjects if s.tls]
    if not subjects:
        return [], None, None
    return (subjects, *prepare(log))


@contextlib.contextmanager
def _running(s, port, children, certs, problems, label, pin=None):
    """The subject serving HTTPS (None if it did not start: a problem is recorded), stopped
    afterwards, with what went wrong at the stop among the problems."""
    try:
        srv = Server(s, port, children, pin=pin, tls=certs).start()
    except StartError as e:
        problems.append(f"{label}: did not start: {e}")
        yield None
        return
    try:
        yield srv
    finally:
        problems.extend(f"{label}: {p}" for p in srv.stop().problems())


def resume(subjects, ports, opts, log):
    """`tls-resume`: 4 children, one client, 200 reconnects with its latest ticket."""
    out = dict(children=RESUME_CHILDREN, reconnects=RECONNECTS, rows=[], skipped=[], problems=[])
    subjects, certs, client = _setup(subjects, out, log)
    for s in subjects:
        with _running(s, ports[s.name], RESUME_CHILDREN, certs, out["problems"], s.name) as srv:
            if not srv:
                continue
            ans = tlsload(client, "reconnect", srv.port, "-n", RECONNECTS, timeout=120)
            row = dict(subject=s.name, **ans, served_by=len(ans.get("children", {})))
            out["rows"].append(row)
            log(f"  tls-resume {s.name}: " + (ans["failure"] if "failure" in ans else
                f"{ans['resumed']}/{ans['reconnects']} resumed, served by {row['served_by']} children, "
                f"{ans['errors']} errors"))
    return out


def memory(subjects, ports, opts, log):
    """`tls-memory`: VmRSS of the one child after one HTTPS request, then with opts.idle_conns
    idle TLS keep-alive connections: the RSS each adds."""
    out = dict(conns=opts.idle_conns, rows=[], skipped=[], problems=[])
    subjects, certs, client = _setup(subjects, out, log)
    for s in subjects:
        with _running(s, ports[s.name], 1, certs, out["problems"], s.name) as srv:
            if not srv:
                continue
            row = _hold(srv, client, opts.idle_conns, out["problems"])
            if row:
                out["rows"].append(row)
                log(f"  tls-memory {s.name}: idle child {row['idle_child_kib']} KiB, {row['held']} held "
                    f"({row['failed']} failed or closed) -> {row['loaded_child_kib']} KiB"
                    + (f", {row['per_conn_bytes']:.0f} B/conn" if row["per_conn_bytes"] else ""))
    return out


def _hold(srv, client, n, problems):
    name = srv.subject.name
    kids = srv.child_pids()
    if len(kids) != 1:
        problems.append(f"{name}: expected one child, found {kids}")
        return None
    child = kids[0]
    httpc.get(srv.port, "/", tls=True)
    time.sleep(0.3)
    idle = procfs.rss_kib(child)
    p = subprocess.Popen([str(client), "hold", "-addr", f"127.0.0.1:{srv.port}", "-n", str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={"GOMAXPROCS": "1", "PATH": "/usr/bin:/bin"})
    try:
        held = _answer(p, 120)
        if held is None:
            problems.append(f"{name}: tlsload hold gave no answer within 120 s")
            return None
        time.sleep(0.5)
        loaded = procfs.rss_kib(child)
        p.stdin.write("check\n")
        p.stdin.flush()
        closed = (_answer(p, 30) or {}).get("closed", 0)
    finally:
        p.stdin.close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    open_ = held["held"] - closed
    if closed:
        problems.append(f"{name}: the server closed {closed} of the idle TLS connections")
    return dict(subject=name, idle_child_kib=idle, held=open_, failed=held["failed"] + closed,
                first_error=held.get("first_error", ""), loaded_child_kib=loaded,
                per_conn_bytes=(loaded - idle) * 1024 / open_ if open_ else None)


def _answer(p, timeout):
    """The next JSON line of a tlsload process, or None after timeout."""
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    line = p.stdout.readline()
    return json.loads(line) if line else None


RUNNERS = {"tls": load, "tls-resume": resume, "tls-memory": memory}
