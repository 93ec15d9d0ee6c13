"""Runs wrk with a hard timeout and parses what it prints."""

import re
import subprocess
from dataclasses import asdict, dataclass, field

from .subjects import BENCH

PIPELINE_LUA = BENCH / "pipeline.lua"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: dict = field(default_factory=dict)  # connect/read/write/timeout/non2xx
    failure: str = ""  # wrk did not run to the end
    raw: str = ""

    @property
    def error_count(self):
        return sum(self.errors.values())

    @property
    def valid(self):
        return not self.failure and self.error_count == 0 and self.requests > 0

    def to_dict(self):
        d = asdict(self)
        d["valid"] = self.valid
        return d


def _ms(value, unit):
    return float(value) * _UNITS[unit]


def parse(text):
    r = WrkResult(raw=text)
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),", text, re.M)
    if m:
        r.requests = int(m.group(1))
        r.seconds = _ms(m.group(2), m.group(3)) / 1e3
    m = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    if m:
        r.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if m:
            setattr(r, attr, _ms(m.group(1), m.group(2)))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r.errors.update(
            connect=int(m.group(1)), read=int(m.group(2)), write=int(m.group(3)), timeout=int(m.group(4))
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r.errors["non2xx"] = int(m.group(1))
    if not r.requests or not r.rps:
        r.failure = "could not parse wrk's output"
    return r


def run(port, *, path="/", threads, conns, seconds, depth=1, latency=True, pin=None, timeout_s=None,
        tls=False):
    """One wrk run (HTTPS with tls: Debian's wrk is built with OpenSSL). depth > 1 uses
    bench/pipeline.lua (depth requests per write). The run is killed if it outlives its
    duration by 15 s (or timeout_s)."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s"]
    if latency and depth == 1:
        cmd.append("--latency")
    if depth > 1:
        cmd += ["-s", str(PIPELINE_LUA)]
    cmd.append(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}")
    if depth > 1:
        cmd += ["--", str(depth)]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    limit = timeout_s if timeout_s is not None else seconds + 15
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return WrkResult(failure=f"wrk killed after {limit:.0f} s (hard timeout)", raw=out)
    r = parse(p.stdout)
    if p.returncode != 0:
        r.failure = f"wrk exited {p.returncode}: {p.stderr.strip()[-200:]}"
    elif p.stderr.strip():
        r.raw += "\n[stderr] " + p.stderr.strip()
    return r
