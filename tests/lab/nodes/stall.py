"""Control-plane stalls: `lab fault freeze SERVICE --seconds N` (CONTRACT.md
"Control-plane faults").

freeze SIGSTOPs the service's whole process tree (the process `cloud`
started, its process group and every descendant: nova-api's workers
included), as a stuck eventlet hub, a database failover or a long GC would
stop it, and SIGCONTs the same processes N seconds later. The thaw is done by
a detached helper (its own session, started BEFORE the first SIGSTOP), so the
service thaws even if the caller dies. `thaw SERVICE` thaws at once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import labcommon as lc

# mariadb: the database stalls (a failover, a full disk); Nova's connections
# hang rather than reset.
SERVICES = ("nova-api", "nova-conductor", "nova-scheduler", "placement", "keystone",
            "mariadb")
MAX_SECONDS = 600

THAWER = r"""
import os, signal, sys, time
time.sleep(float(sys.argv[1]))
for pid in (int(p) for p in sys.argv[2:]):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
"""


def _service_pid(service):
    """The pid `cloud` recorded for SERVICE, if it is still that process."""
    text = lc.read_text(lc.RUN / f"{service}.pid")
    if not text:
        return None
    parts = text.split()
    try:
        pid = int(parts[0])
    except ValueError:
        return None
    started = parts[1] if len(parts) > 1 else None
    if started and str(lc.proc_starttime(pid)) != started:
        return None
    return pid if lc.proc_alive(pid) else None


def _tree(pid):
    """pid, its process group and every descendant (workers fork)."""
    found = {pid}
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            ppid, pgrp = int(rest[1]), int(rest[2])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        if pgrp == pid:
            found.add(int(d))
    todo = list(found)
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return sorted(found)


def _record(service):
    return lc.RUN / f"freeze-{service}.json"


def freeze(service, seconds):
    if service not in SERVICES:
        raise lc.LabError(f"cannot freeze {service!r}; one of: {', '.join(SERVICES)}")
    if not 0 < seconds <= MAX_SECONDS:
        raise lc.LabError(f"--seconds must be in (0, {MAX_SECONDS}], not {seconds}")
    pid = _service_pid(service)
    if not pid:
        raise lc.LabError(f"{service} is not running (no live pid in {lc.RUN}); "
                          "`lab up` starts the control plane")
    pids = _tree(pid)
    # The thawer first: once anything is stopped, something must wake it.
    subprocess.Popen([sys.executable, "-c", THAWER, str(seconds)] + [str(p) for p in pids],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    until = time.time() + seconds
    lc.write_json(_record(service), {"pids": pids, "until_unix": until})
    for p in pids:
        try:
            os.kill(p, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    return [f"{service}: {len(pids)} process(es) SIGSTOPped ({' '.join(map(str, pids))}); "
            f"SIGCONT in {seconds:g}s by a detached helper"]


def thaw(service):
    rec = lc.read_json(_record(service), {}) or {}
    pids = rec.get("pids") or []
    pid = _service_pid(service)
    if pid:
        pids = sorted(set(pids) | set(_tree(pid)))
    for p in pids:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass
    try:
        os.unlink(_record(service))
    except FileNotFoundError:
        pass
    return [f"{service}: SIGCONT to {len(pids)} process(es)"]


def frozen():
    """Services frozen now, for `status`."""
    out = []
    for s in SERVICES:
        rec = lc.read_json(_record(s), None)
        if rec and rec.get("until_unix", 0) > time.time():
            out.append(s)
    return out


def as_json(kind, service, lines, began_unix_ms, seconds):
    return json.dumps({"fault": kind, "node": service, "did": lines,
                       "began_unix_ms": began_unix_ms, "seconds": seconds})
