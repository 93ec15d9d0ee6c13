"""The benchmark grid of DESIGN.md ("Benchmark protocol"): configurations x connections x
pipeline depth, every subject in every round, subjects interleaved and their order reversed
each round. One server start per (round, configuration, subject) serves all of its cells."""

import resource
from dataclasses import dataclass

from . import procfs, wrk
from .subjects import Server, StartError

# split: the server has core 1 to itself (one child), wrk has core 0.
# shared: two children and wrk -t2 compete for both cores, as on a real small box.
CONFIGS = {
    "split": dict(children=1, server_pin=1, wrk_threads=1, wrk_pin=0),
    "shared": dict(children=2, server_pin=None, wrk_threads=2, wrk_pin=None),
}


@dataclass
class GridOptions:
    configs: list
    conns: list
    depths: list
    rounds: int
    seconds: int
    warmup: int


def cpu_us_per_request(ticks, requests):
    if not requests:
        return None
    return ticks * 1e6 / procfs.CLK_TCK / requests


def run_grid(subjects, ports, opts, log, events):
    runs = []
    cells = [(c, d) for c in opts.conns for d in opts.depths]
    total = opts.rounds * len(opts.configs) * len(subjects) * len(cells)
    done = 0
    for rnd in range(1, opts.rounds + 1):
        forward = rnd % 2 == 1
        order = subjects if forward else subjects[::-1]
        cell_order = cells if forward else cells[::-1]
        for cfg_name in opts.configs:
            cfg = CONFIGS[cfg_name]
            for s in order:
                base = dict(round=rnd, config=cfg_name, subject=s.name)
                try:
                    srv = Server(s, ports[s.name], cfg["children"], pin=cfg["server_pin"]).start()
                except StartError as e:
                    events.append(f"round {rnd} {cfg_name} {s.name}: did not start: {e}")
                    log(f"  {s.name} did not start: {e}")
                    for conns, depth in cell_order:
                        runs.append(dict(base, conns=conns, depth=depth, valid=False,
                                         failure=f"server did not start: {e}"))
                    done += len(cells)
                    continue
                try:
                    if opts.warmup:
                        wrk.run(ports[s.name], threads=cfg["wrk_threads"], conns=max(opts.conns),
                                seconds=opts.warmup, latency=False, pin=cfg["wrk_pin"])
                    for conns, depth in cell_order:
                        done += 1
                        rec = measure(srv, cfg, conns, depth, opts.seconds)
                        runs.append(dict(base, **rec))
                        log(f"  [{done}/{total}] r{rnd} {cfg_name} c{conns} d{depth} {s.name}: "
                            + describe(rec))
                finally:
                    if srv.proc.poll() is not None:
                        events.append(f"round {rnd} {cfg_name} {s.name}: master exited by itself "
                                      f"(status {srv.proc.returncode}) during the runs")
                    st = srv.stop()
                    for p in st.problems():
                        events.append(f"round {rnd} {cfg_name} {s.name}: {p}")
                        log(f"  {s.name}: {p}")
    return runs


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Around:
    """What the machine did during one load run: the server's CPU ticks (master and children),
    the client's CPU seconds (the load tool is our child process) and the cores' worth of CPU
    that neither used."""
    ticks: int
    missing: list  # server processes that exited during the run
    client_cpu_s: float
    other_cores: float | None


def around(srv, load):
    """Runs load() (a client subprocess that reports `.seconds`) with the server's CPU time read
    around it; returns (load's result, Around). The machine is shared: `other_cores` says how
    much another workload may have disturbed the run."""
    ident = srv.tree()
    before, _ = procfs.total_cpu_ticks(ident)
    busy0, client0 = procfs.busy_ticks(), children_cpu_s()
    res = load()
    busy1, client1 = procfs.busy_ticks(), children_cpu_s()
    after, missing = procfs.total_cpu_ticks(ident)
    server_s = (after - before) / procfs.CLK_TCK
    other = (busy1 - busy0) / procfs.CLK_TCK - server_s - (client1 - client0)
    secs = getattr(res, "seconds", 0)
    return res, Around(after - before, missing, client1 - client0,
                       max(0.0, other) / secs if secs else None)


def measure(srv, cfg, conns, depth, seconds):
    """One wrk run with the server's CPU time (master + children) read around it."""
    res, a = around(srv, lambda: wrk.run(srv.port, threads=cfg["wrk_threads"], conns=conns,
                                         seconds=seconds, depth=depth, pin=cfg["wrk_pin"]))
    missing = a.missing
    rec = res.to_dict()
    rec.update(conns=conns, depth=depth, cpu_ticks=a.ticks,
               cpu_us_per_req=cpu_us_per_request(a.ticks, res.requests),
               wrk_cpu_s=a.client_cpu_s, other_cores=a.other_cores)
    if missing:
        rec["failure"] = (rec["failure"] + "; " if rec["failure"] else "") + \
            f"server processes exited during the run: {missing}"
        rec["valid"] = False
    if depth > 1:
        rec["p50_ms"] = rec["p99_ms"] = None  # wrk's latency is meaningless when pipelining
    return rec


def describe(rec):
    if rec.get("failure"):
        return f"INVALID ({rec['failure']})"
    parts = [f"{rec['rps']:,.0f} req/s"]
    if rec.get("p99_ms") is not None:
        parts.append(f"p50 {rec['p50_ms']:.2f} ms p99 {rec['p99_ms']:.2f} ms")
    if rec.get("cpu_us_per_req") is not None:
        parts.append(f"{rec['cpu_us_per_req']:.2f} us/req")
    if rec.get("other_cores") is not None:
        parts.append(f"other load {rec['other_cores']:.2f} cores")
    if not rec["valid"]:
        parts.append(f"INVALID: errors {rec['errors']}")
    return ", ".join(parts)
