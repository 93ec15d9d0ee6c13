"""The TLS part of the report: medians and per-round ratios of the `tls` scenario, the
resumption and memory scenarios, and the targets of issue 16."""

from .report import ISSUE_16_SCENARIOS, f, fmt_ratio, med, table

ENGINE = ("ours-c", "ours-rust")
PEERS = ("nginx", "fasthttp")


def _runs(sc):
    return sc.get("runs", [])


def _distinct(runs, key):
    """The values of runs' `key`, each once, in the order they first ran."""
    return list(dict.fromkeys(r[key] for r in runs))


def _cells(runs):
    return _distinct(runs, "cell")


def _subjects(runs):
    return _distinct(runs, "subject")


def _valid(runs):
    return {(r["cell"], r["round"], r["subject"]): r for r in runs if r.get("valid")}


def _ratios(runs, a, b, metric, cell_b=None):
    """{cell: [a/b per round]}: a's cell against b's same cell (or b's cell_b)."""
    idx = _valid(runs)
    rounds = sorted({r["round"] for r in runs})
    out = {}
    for cell in _cells(runs):
        vals = []
        for rnd in rounds:
            ra, rb = idx.get((cell, rnd, a)), idx.get((cell_b or cell, rnd, b))
            if ra and rb and ra.get(metric) is not None and rb.get(metric):
                vals.append(ra[metric] / rb[metric])
        if vals:
            out[cell] = vals
    return out


def _pairs(runs):
    subs = _subjects(runs)
    ours = [s for s in subs if s.startswith("ours")]
    return [(o, p) for o in ours for p in subs if p in PEERS]


def load_section(sc):
    runs = _runs(sc)
    out = [f"### TLS load (one child on core 1, client on core 0; {sc['rounds']} round(s) of {sc['seconds']} s "
           f"per cell; keep-alive: wrk over https, {sc['conns']} connections; handshakes: tlsload, "
           f"{sc['workers']} concurrent clients, one GET / per connection)"]
    if not runs:
        return "\n\n".join(out + ["No run."])
    rows = []
    for cell in _cells(runs):
        for s in _subjects(runs):
            rs = [r for r in runs if r["cell"] == cell and r["subject"] == s]
            good = [r for r in rs if r.get("valid")]
            if not rs:
                continue
            unit = rs[0]["unit"]
            rows.append([cell, s, f"{len(good)}/{len(rs)}", f(med([r["rate"] for r in good]), ",.0f") + f" {unit}",
                         f(med([r["cpu_us"] for r in good]), ".2f"),
                         f(med([r["other_cores"] for r in good if r.get("other_cores") is not None]), ".2f")])
    out.append(table(["cell", "subject", "valid runs", "rate (median)", "server CPU µs each (median)",
                      "other load (cores)"], rows))
    cells = _cells(runs)
    for metric, title in (("rate", "rate (above 1: the first is faster)"),
                          ("cpu_us", "server CPU per request or handshake (below 1: the first is cheaper)")):
        rows = [[f"{a} / {b}", *[fmt_ratio(_ratios(runs, a, b, metric).get(c)) for c in cells]]
                for a, b in _pairs(runs)]
        out.append(f"Per-round ratios of {title}: median (min..max)\n\n" + table(["pair", *cells], rows))
    rows = []
    for s in _subjects(runs):
        v = _ratios(runs, s, s, "cpu_us", cell_b="full handshake").get("resumed handshake")
        if v:
            rows.append([s, fmt_ratio(v)])
    if rows:
        out.append("Resumed handshake CPU / full handshake CPU of the same subject, per round\n\n"
                   + table(["subject", "ratio: median (min..max)"], rows))
    out.append("Every run\n\n" + table(
        ["round", "cell", "subject", "rate", "server CPU µs each", "count", "resumed", "other load", "valid"],
        [[r["round"], r["cell"], r["subject"], f(r.get("rate"), ",.0f"), f(r.get("cpu_us"), ".2f"), r.get("count", "–"),
          f(r.get("resumed_share"), ".1%"), f(r.get("other_cores"), ".2f"),
          "yes" if r.get("valid") else f"**no**: {r.get('failure')}"]
         for r in sorted(runs, key=lambda r: (r["round"], r["cell"], r["subject"]))]))
    return "\n\n".join(out)


def resume_section(sc):
    out = [f"### TLS resumption across {sc['children']} children (one client, {sc['reconnects']} reconnects with "
           "its latest ticket, GET /pid on each)"]
    out.append(table(["subject", "resumed", "children that served", "errors"],
                     [[r["subject"], f"{r.get('resumed', '–')}/{r.get('reconnects', sc['reconnects'])}",
                       r.get("served_by", "–"), r.get("failure") or r.get("errors", 0)] for r in sc["rows"]]))
    return "\n\n".join(out)


def memory_section(sc):
    out = [f"### TLS memory (one child; {sc['conns']:,} idle TLS keep-alive connections, each after its "
           "handshake and one GET /)"]
    out.append(table(["subject", "idle child RSS KiB", "held open", "failed or closed", "child RSS with them KiB",
                      "added per connection"],
                     [[r["subject"], r["idle_child_kib"], r["held"], r["failed"], r["loaded_child_kib"],
                       f(r["per_conn_bytes"], ".0f") + " B"] for r in sc["rows"]]))
    return "\n\n".join(out)


def targets(scen):
    rows = []
    load = scen.get("tls")
    runs = _runs(load) if load else []
    subs = _subjects(runs)
    engine = [s for s in subs if s in ENGINE]

    def ratio_target(label, a, b, cell, metric, test, cell_b=None):
        if b not in subs:
            return
        v = _ratios(runs, a, b, metric, cell_b=cell_b).get(cell)
        if not v:
            rows.append([label, f"{a} / {b}", "no valid pair of runs", "not measured"])
            return
        rows.append([label, f"{a} / {b}", fmt_ratio(v), "met" if test(med(v)) else "**not met**"])

    for o in engine:
        ratio_target("keep-alive depth 1: CPU µs/request ≤ 0.9 × nginx", o, "nginx", "keep-alive d1", "cpu_us",
                     lambda v: v <= 0.9)
        ratio_target("keep-alive depth 16: req/s ≥ 3 × nginx", o, "nginx", "keep-alive d16", "rate", lambda v: v >= 3)
        ratio_target("keep-alive depth 16: req/s ≥ 1.3 × fasthttp", o, "fasthttp", "keep-alive d16", "rate",
                     lambda v: v >= 1.3)
        ratio_target("full handshake: CPU µs per handshake ≤ nginx", o, "nginx", "full handshake", "cpu_us",
                     lambda v: v <= 1)
        ratio_target("resumed handshake: CPU ≤ 0.5 × our full handshake", o, o, "resumed handshake", "cpu_us",
                     lambda v: v <= 0.5, cell_b="full handshake")
    res = scen.get("tls-resume")
    if res:
        by = {r["subject"]: r for r in res["rows"] if "resumed" in r}
        beside = ", ".join(f"{p}: {by[p]['resumed']}/{by[p]['reconnects']}" for p in PEERS if p in by)
        for o in (s for s in ENGINE if s in by):
            r = by[o]
            rows.append([f"resumption across {res['children']} children: {res['reconnects']}/{res['reconnects']}",
                         o, f"{r['resumed']}/{r['reconnects']} over {r['served_by']} children"
                         + (f" ({beside})" if beside else ""),
                         "met" if r["resumed"] == r["reconnects"] == res["reconnects"] else "**not met**"])
    mem = scen.get("tls-memory")
    if mem:
        by = {r["subject"]: r for r in mem["rows"] if r.get("per_conn_bytes")}
        for o in (s for s in ENGINE if s in by):
            if "nginx" not in by:
                continue
            v = by[o]["per_conn_bytes"] / by["nginx"]["per_conn_bytes"]
            rows.append([f"RSS per idle TLS keep-alive connection ({mem['conns']:,} held) ≤ 0.5 × nginx", f"{o} / nginx",
                         f"{v:.3f} ({by[o]['per_conn_bytes']:.0f} B vs {by['nginx']['per_conn_bytes']:.0f} B)",
                         "met" if v <= 0.5 else "**not met**"])
    return table(["target", "subjects", "figure (median of per-round ratios (min..max), or the scenario's figure)",
                  "status"], rows) if rows else "No TLS scenario produced a figure."


def section(scen):
    """The report's TLS chapter, or "" when no TLS scenario ran."""
    parts = []
    if not any(k in scen for k in ISSUE_16_SCENARIOS):
        return ""
    parts.append("## TLS (issue 16): ECDSA P-256 certificate, TLS 1.3, X25519\n")
    parts.append("### Targets of issue 16\n\n" + targets(scen))
    for key, fn in (("tls", load_section), ("tls-resume", resume_section), ("tls-memory", memory_section)):
        if key in scen:
            parts.append(fn(scen[key]))
            skips = [f"- skipped {s}" for s in scen[key].get("skipped", [])]
            skips += [f"- problem: {p}" for p in scen[key].get("problems", [])]
            if skips:
                parts.append("\n".join(skips))
    return "\n\n".join(parts) + "\n"
