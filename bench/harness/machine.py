"""What the report says about the machine, and the tools the harness installs."""

import os
import platform
import shutil
import subprocess

APT_TOOLS = {"wrk": "wrk", "nginx": "nginx"}  # command -> Debian package


def which(cmd):
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")


def install_tools(log):
    """apt-get update once, then apt-get install -y whatever is missing."""
    missing = [pkg for cmd, pkg in APT_TOOLS.items() if not which(cmd)]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(missing)} with apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, timeout=900)
    for cmd in APT_TOOLS:
        if not which(cmd):
            raise SystemExit(f"bench/run: {cmd} is still missing after apt-get install")


def describe():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return dict(nproc=os.cpu_count(), cpu=cpu, kernel=platform.release(), memory=mem)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
