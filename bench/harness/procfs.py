"""What the harness reads from /proc: process trees, CPU time, RSS, liveness.

A process is named by (pid, start time) so that a recycled pid is never mistaken for one of
ours, above all before sending it SIGKILL.
"""

import ctypes
import os
import signal
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """Orphans of the servers we start (children whose master died) are re-parented to us
    instead of to PID 1, so we can see them, wait for them and be sure none is left."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _stat_fields(pid):
    """Fields of /proc/PID/stat from field 3 (state) on, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after its last ')'.
    return data[data.rindex(b")") + 2 :].split()


def state(pid):
    f = _stat_fields(pid)
    return None if f is None else f[0].decode()


def ppid(pid):
    f = _stat_fields(pid)
    return None if f is None else int(f[1])


def start_time(pid):
    f = _stat_fields(pid)
    return None if f is None else int(f[19])


def cpu_ticks(pid):
    """utime + stime of the whole process (all its threads), in clock ticks."""
    f = _stat_fields(pid)
    return None if f is None else int(f[11]) + int(f[12])


def is_running(pid, started=None):
    """True while the process exists, is not a zombie and (if given) has that start time."""
    f = _stat_fields(pid)
    if f is None or f[0] in (b"Z", b"X"):
        return False
    return started is None or int(f[19]) == started


def descendants(root):
    """Pids of every live descendant of root (not root itself)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(name)
        if f is None or f[0] in (b"Z", b"X"):
            continue
        children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def identity(pids):
    """{pid: start time} for the pids that still exist."""
    out = {}
    for p in pids:
        st = start_time(p)
        if st is not None:
            out[p] = st
    return out


def total_cpu_ticks(ident):
    """Sum of utime+stime over the processes of an identity map; a process that vanished
    (or whose pid was recycled) counts as missing."""
    total, missing = 0, []
    for pid, st in ident.items():
        f = _stat_fields(pid)
        if f is None or int(f[19]) != st:
            missing.append(pid)
            continue
        total += int(f[11]) + int(f[12])
    return total, missing


def _threads(ident):
    """(pid, tid) of every thread of the processes in ident that is still there."""
    for pid in ident:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            yield pid, int(tid)


def thread_cpu_ns(ident):
    """{(pid, tid): nanoseconds on a CPU} for every thread of the processes in ident
    (/proc/PID/task/TID/schedstat, exact where utime and stime count 10 ms ticks)."""
    out = {}
    for pid, tid in _threads(ident):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[(pid, tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def other_threads_share(before, after):
    """Of the CPU time the threads took between two thread_cpu_ns readings, the share of the
    threads that are not their process's busiest (for an event-loop server: everything but
    the loops)."""
    per_process = {}
    for key, ns in after.items():
        per_process.setdefault(key[0], []).append(ns - before.get(key, 0))
    total = sum(sum(v) for v in per_process.values())
    others = sum(sum(v) - max(v) for v in per_process.values())
    return others / total if total > 0 else 0.0


def context_switches(ident):
    """(voluntary, involuntary) context switches summed over every thread of the processes
    in ident: a thread that sleeps (an event loop with nothing to do) switches voluntarily,
    a preempted one involuntarily."""
    vol = invol = 0
    for pid, tid in _threads(ident):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


def rss_kib(pid):
    """VmRSS of a process in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def kill_if_ours(pid, started, sig=signal.SIGKILL):
    """Signals pid only if it is still the process we started."""
    if is_running(pid, started):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def reap_if_child(pid):
    """Waits for pid if it became our child (subreaper); never blocks."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(ident, timeout):
    """Polls until none of the processes runs; returns the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in ident:
            reap_if_child(pid)
        left = {p: s for p, s in ident.items() if is_running(p, s)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def busy_ticks():
    """Ticks all CPUs spent in user, system or stolen time since boot, from /proc/stat.
    irq and softirq time is left out: with IRQ time accounting it is charged to no process,
    so the loopback traffic of the run itself would show up as someone else's load."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return user + nice + system + steal  # guest time is inside user
