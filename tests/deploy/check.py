#!/usr/bin/env python3
"""Checks the deployment files of deploy/ (quoted by the README's "Running in production").

    python3 check.py DEMO_SERVER

- deploy/systemd: `systemd-analyze verify` of the socket and service units (Debian's
  `systemd` package), on copies whose ExecStart names the demo_server given here instead of
  /usr/local/bin/demo_server (verify insists that the program exists); any warning fails. Then
  what must agree: Type=notify, NotifyAccess=all, KillMode=mixed, ExecReload with SIGHUP,
  `--addr systemd`, and TimeoutStopSec longer than the shutdown delay plus the grace period of
  ExecStart's flags. When this demo_server knows `--addr systemd`, the service's command is run
  under `systemd-socket-activate` (a real implementation of the socket-passing protocol) with a
  NOTIFY_SOCKET this script reads: READY=1, a reload (RELOADING=1, READY=1), a stop (STOPPING=1,
  /health 503 through the shutdown delay, exit 0 after it).
- deploy/k8s/pod.yaml: parsed with PyYAML (no Kubernetes schema is reachable offline, so the
  fields used are checked by hand): a v1 Pod, a readiness probe on /health by a declared port,
  no preStop hook, and terminationGracePeriodSeconds longer than delay plus grace.
- deploy/container/Dockerfile: an exec-form ENTRYPOINT (so the master is PID 1), SIGTERM as
  the stop signal, a --stop-timeout in its instructions longer than delay plus grace; then the
  entry point is run as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`):
  ready, /health 200, SIGTERM, /health 503 and `/` still answered through the delay, exit 0.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "c"))
import e2e  # noqa: E402  (the C end-to-end driver's helpers)
from e2e import Server, check, fail, free_port, request, wait_until  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DEPLOY = os.path.join(ROOT, "deploy")
INSTALLED = "/usr/local/bin/demo_server"


def unit_entries(path):
    """A unit file as (section, key, value) triples, in order (keys may repeat)."""
    entries, section = [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def one(entries, section, key):
    values = [v for s, k, v in entries if (s, k) == (section, key)]
    check(len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}")
    return values[0]


def stop_budget(argv):
    """Seconds a stop may take by the demo's flags: shutdown delay plus grace period."""
    flags = dict(zip(argv, argv[1:]))
    check("--shutdown-delay-ms" in flags, f"no --shutdown-delay-ms in {argv}")
    grace = int(flags.get("--grace-ms", 5000))
    return (int(flags["--shutdown-delay-ms"]) + grace) / 1000, int(flags["--shutdown-delay-ms"])


def with_program(argv, prog, addr=None):
    """`argv` with the installed path replaced by `prog` (and --addr's value by `addr`)."""
    check(argv[0] == INSTALLED, f"the command runs {argv[0]}, not {INSTALLED}")
    out = [prog] + argv[1:]
    if addr is not None:
        i = out.index("--addr")
        out[i + 1] = addr
    return out


def systemd_units(prog):
    analyze = e2e.ensure_installed("systemd-analyze", ["systemd"])
    check(analyze, "systemd-analyze is needed (Debian package systemd)")
    socket_unit = os.path.join(DEPLOY, "systemd", "prefork-demo.socket")
    service_unit = os.path.join(DEPLOY, "systemd", "prefork-demo.service")
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for path in (socket_unit, service_unit):
            with open(path) as f:
                text = f.read()
            copy = os.path.join(tmp, os.path.basename(path))
            with open(copy, "w") as f:
                f.write(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={os.path.abspath(prog)} "))
            copies.append(copy)
        r = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        out = (r.stdout + r.stderr).strip()
        check(r.returncode == 0 and not out, f"systemd-analyze verify: {r.returncode} {out}")
    print("  systemd-analyze verify: both units clean", flush=True)

    sock, svc = unit_entries(socket_unit), unit_entries(service_unit)
    one(sock, "Socket", "ListenStream")
    check(one(svc, "Service", "Type") == "notify", "the service must be Type=notify")
    check(one(svc, "Service", "NotifyAccess") == "all",
          "NotifyAccess=all: a binary upgrade's new master sends MAINPID= before it is main")
    check(one(svc, "Service", "KillMode") == "mixed",
          "KillMode=mixed: the SIGTERM must reach the master alone, or the delay is skipped")
    reload = one(svc, "Service", "ExecReload")
    check("-HUP" in reload and "$MAINPID" in reload, f"ExecReload={reload}")
    check("prefork-demo.socket" in one(svc, "Unit", "Requires"), "the service Requires its socket")
    argv = shlex.split(one(svc, "Service", "ExecStart"))
    check(argv[argv.index("--addr") + 1] == "systemd", f"ExecStart takes no systemd socket: {argv}")
    budget, delay_ms = stop_budget(argv)
    timeout = one(svc, "Service", "TimeoutStopSec")
    check(float(timeout) > budget, f"TimeoutStopSec={timeout} is not above delay + grace, {budget} s")
    print(f"  units agree: TimeoutStopSec={timeout} > delay + grace = {budget} s", flush=True)

    usage = subprocess.run([prog, "--help"], capture_output=True, text=True, timeout=20).stdout
    if "systemd" not in usage:
        print("  SKIP the live run: this demo_server has no --addr systemd yet", flush=True)
        return
    activate = e2e.ensure_installed("systemd-socket-activate", ["systemd"])
    check(activate, "systemd-socket-activate is needed (Debian package systemd)")
    run_as_service(activate, with_program(argv, prog), delay_ms)


def run_as_service(activate, argv, delay_ms):
    """The service's command under systemd-socket-activate, as systemd would run it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        notify_path = os.path.join(tmp, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(20)
        heard = []

        def hear(what):
            deadline = time.monotonic() + 20
            while not any(what in m for m in heard):
                check(time.monotonic() < deadline, f"no {what} from the master; heard {heard}")
                heard.append(notify.recv(4096).decode())
            print(f"  sd_notify: {what}", flush=True)

        srv = Server([activate, "-l", f"127.0.0.1:{port}", "--fdname=http",
                      f"--setenv=NOTIFY_SOCKET={notify_path}", *argv])
        try:
            # systemd-socket-activate execs the service at the first connection, which the
            # service then answers over the passed socket.
            status = first_request(port, "/health")
            check(status == 200, f"/health gave {status}")
            srv.ready()
            hear("READY=1")
            srv.proc.send_signal(signal.SIGHUP)
            hear("RELOADING=1")
            heard.clear()
            hear("READY=1")
            kids = srv.begin_stop()
            asked = time.monotonic()
            hear("STOPPING=1")
            status, _, _ = request(port, "/health")
            check(status == 503, f"/health in the shutdown delay gave {status}")
            srv.finish(kids, timeout=60)
            took = time.monotonic() - asked
            print(f"  measure: SIGTERM to exit under systemd-socket-activate: {took:.2f} s",
                  flush=True)
            check(took >= delay_ms / 1000, f"exited {took:.2f} s after SIGTERM, inside the delay")
        finally:
            srv.kill()
            notify.close()


def first_request(port, path, within=20):
    """The status of `path` from the first server to listen on `port` within `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            status, _, _ = request(port, path)
            return status
        except ConnectionRefusedError:
            check(time.monotonic() < deadline, f"nothing listens on {port} after {within} s")
            time.sleep(0.05)


def k8s_pod():
    import yaml  # PyYAML, installed by the test stage when missing

    with open(os.path.join(DEPLOY, "k8s", "pod.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    check(len(docs) == 1, f"pod.yaml holds {len(docs)} documents")
    pod = docs[0]
    check((pod.get("apiVersion"), pod.get("kind")) == ("v1", "Pod"), f"not a v1 Pod: {pod}")
    spec = pod["spec"]
    (container,) = spec["containers"]
    check(isinstance(container.get("image"), str) and container.get("name"), "name and image")
    command = [str(a) for a in container["command"]]
    budget, _ = stop_budget(command)
    grace = spec.get("terminationGracePeriodSeconds")
    check(isinstance(grace, int) and grace > budget,
          f"terminationGracePeriodSeconds {grace} is not above delay + grace, {budget} s")
    probe = container["readinessProbe"]["httpGet"]
    check(probe["path"] == "/health", f"the readiness probe asks {probe['path']}")
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    check(probe["port"] in ports or probe["port"] in ports.values(),
          f"the readiness probe's port {probe['port']} is not one of {ports}")
    addr_port = int(command[command.index("--addr") + 1].rsplit(":", 1)[1])
    check(addr_port in ports.values(), f"the server listens on {addr_port}, the pod on {ports}")
    check("preStop" not in container.get("lifecycle", {}),
          "no preStop sleep: --shutdown-delay-ms does its work")
    print(f"  pod.yaml: terminationGracePeriodSeconds={grace} > delay + grace = {budget} s, "
          "readiness on /health", flush=True)


def container_entry(prog):
    with open(os.path.join(DEPLOY, "container", "Dockerfile")) as f:
        text = f.read()
    lines = [l.strip() for l in text.splitlines()]
    entries = [l for l in lines if l.startswith("ENTRYPOINT ")]
    check(len(entries) == 1, f"{len(entries)} ENTRYPOINT lines")
    try:
        argv = json.loads(entries[0][len("ENTRYPOINT "):])
    except json.JSONDecodeError:
        fail(f"ENTRYPOINT is not the exec form, so the master would not be PID 1: {entries[0]}")
    check("STOPSIGNAL SIGTERM" in lines, "STOPSIGNAL SIGTERM")
    budget, delay_ms = stop_budget(argv)
    m = re.search(r"--stop-timeout (\d+)", text)
    check(m and int(m.group(1)) > budget, f"the run line's --stop-timeout is not above {budget} s")
    print(f"  Dockerfile: exec-form ENTRYPOINT, --stop-timeout {m.group(1)} > {budget} s",
          flush=True)

    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, timeout=20)
    if probe.returncode != 0:
        print("  SKIP the PID 1 run: unshare cannot make a PID namespace here (it needs root "
              f"or user namespaces): {probe.stderr.decode().strip()}", flush=True)
        return
    port = free_port()
    cmd = with_program(argv, prog, f"127.0.0.1:{port}")
    srv = Server(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *cmd])
    try:
        m = srv.expect(e2e.READY.pattern)
        check(m.group(1) == "1", f"the master is pid {m.group(1)} in its namespace, not 1")
        master = int(open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read().split()[0])
        status, _, _ = request(port, "/health")
        check(status == 200, f"/health gave {status}")
        os.kill(master, signal.SIGTERM)
        asked = time.monotonic()
        time.sleep(0.3)
        status, _, _ = request(port, "/health")
        check(status == 503, f"/health in the shutdown delay gave {status}")
        status, headers, body = request(port, "/")
        check(status == 200 and headers.get("Connection") == "close",
              f"/ in the shutdown delay: {status} {headers}")
        code = srv.proc.wait(timeout=budget + 10)
        took = time.monotonic() - asked
        check(code == 0, f"the container's init exited with {code}")
        check(took >= delay_ms / 1000, f"exited {took:.2f} s after SIGTERM, inside the delay")
        print(f"  measure: entry point as PID 1, SIGTERM to exit: {took:.2f} s", flush=True)
    finally:
        srv.kill()


def readme_quotes():
    """Every code block of the README's "Running in production" is in the deploy/ file named
    last before it, line for line, so the README cannot drift from what is checked."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index("\n## Running in production")
    end = text.index("\n## ", start + 1)
    named, block, blocks = None, None, 0
    for line in text[start:end].splitlines():
        if block is not None:
            if line.startswith("```"):
                check(named, f"a quoted block names no deploy/ file: {block[:2]}")
                with open(os.path.join(ROOT, named)) as f:
                    have = set(f.read().splitlines())
                missing = [l for l in block if l.strip() and l not in have]
                check(not missing, f"README lines not in {named}: {missing}")
                blocks += 1
                block = None
            else:
                block.append(line)
        elif line.startswith("```"):
            block = []
        else:
            named = (re.findall(r"`(deploy/[^`]+)`", line) or [named])[-1]
    check(blocks >= 4, f"only {blocks} quoted blocks found")
    print(f"  README: {blocks} quoted blocks match their files", flush=True)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check.py DEMO_SERVER")
    prog = sys.argv[1]
    try:
        import yaml  # noqa: F401
    except ImportError:
        fail("PyYAML is needed (pip install pyyaml; scripts/test.d/30-cmake.sh installs it)")
    # Installed before this process becomes a subreaper (see e2e.NEEDS).
    for command in ("systemd-analyze", "systemd-socket-activate"):
        if e2e.ensure_installed(command, ["systemd"]) is None:
            sys.exit(1)
    e2e.become_subreaper()
    try:
        readme_quotes()
        systemd_units(prog)
        k8s_pod()
        container_entry(prog)
        e2e.assert_nothing_left()
    except AssertionError as e:
        print(f"FAIL deploy_files: {e}", flush=True)
        for pid in e2e.children_of(os.getpid()):
            os.kill(pid, signal.SIGKILL)
        sys.exit(1)
    print("PASS deploy_files")


if __name__ == "__main__":
    main()
