"""A lab node's power: what "on" means, and how power is cut or restored.

One machine, two BMCs: `ipmi_sim` owns the machine (its `startcmd` is the
node supervisor, so power-on always goes through it and its status reads are
the truth); the Redfish emulator reads the same truth (the supervisor is alive)
and its power actions end in the same places: ForceOff cuts power exactly as
`lab fault power-off` does, On asks ipmi_sim to power on.

Power is ON  <=> the node's supervisor process runs.
Power is OFF <=> no supervisor, and its reaper has finished the power-loss
                 clean-up (every process of the node's cgroup killed, links
                 down, guest addresses gone): `power.lock` is free.
Standard library only (the Redfish BMC imports this from the lab venv).
"""

import contextlib
import os
import signal
import time

import labcommon as lc
import net


def supervisor(node):
    """The running supervisor's record {pid, starttime, boot_id}, or None."""
    rec = lc.read_json(node.supervisor_pid)
    if rec and lc.proc_alive(rec.get("pid"), rec.get("starttime"), contains="supervisor.py"):
        return rec
    return None


def is_on(node):
    return supervisor(node) is not None


def is_fully_off(node):
    return supervisor(node) is None and lc.lock_is_free(node.power_lock)


def boot_id(node):
    return lc.read_text(node.boot_id_path)


def release_stall(node):
    """Let any I/O waiting on the node's stalled disk complete (a task in D
    state cannot die until it does). Power loss and `unhang` both do this."""
    with contextlib.suppress(FileNotFoundError):
        (node.hang / "stall").unlink()
    # The hang fault is over once its I/O can complete (unhang), or its
    # process is gone with the power.
    with contextlib.suppress(FileNotFoundError):
        node.fault_flag("hang").unlink()


# nft tables (inet and arp) in a hard-hung node's netns that drop every
# packet but loopback's (faults.py, hard-hang).
HANG_TABLE = "vlab_hardhang"


def kdump_senders(node):
    """Names of the node's running-or-recorded fence_kdump_send daemons."""
    d = lc.NODES_RUN / "daemons"
    return sorted(p.stem for p in d.glob(f"{node.name}-kdump-*.json"))


def end_crash(node, thaw=True):
    """Whatever a kdump or hard-hang fault left: the fence_kdump_send
    senders stopped, the node's drop-everything tables removed, its cgroup
    thawed (unless thaw=False: one such fault turning into the other), the
    flags gone. Power loss, power on and heal all do this (after a power
    loss the cgroup is empty, so the thaw wakes nothing). Returns what it
    did."""
    done = []
    for name in kdump_senders(node):
        if lc.stop_daemon(name, deadline_s=2):
            done.append(f"fence_kdump_send {name} stopped")
    for family in ("inet", "arp"):
        if lc.run(["ip", "netns", "exec", node.netns, "nft", "delete", "table", family,
                   HANG_TABLE], check=False).returncode == 0:
            done.append(f"nft table {family} {HANG_TABLE} removed")
    if thaw and net.freeze_requested(node.cgroup):
        net.freeze_cgroup(node.cgroup, False)
        done.append(f"cgroup {node.cgroup} thawed")
    for flag in ("kdump", "hard-hang"):
        with contextlib.suppress(FileNotFoundError):
            node.fault_flag(flag).unlink()
    return done


def cut(node, deadline_s=30.0):
    """Power loss, now: every process in the node's cgroup (supervisor, nova-
    compute, guests, sensor) gets SIGKILL at once, then wait for the reaper to
    finish (links down, guest addresses flushed). Returns what it did."""
    was_on = supervisor(node)
    release_stall(node)
    killed = net.kill_cgroup(node.cgroup) if node.cgroup.exists() else 0
    # The reaper sees the supervisor go and does the rest; if there was no
    # supervisor (e.g. a half-started node), do the rest here.
    lc.wait_for(f"{node.name}'s power-loss clean-up (reaper holding {node.power_lock})",
                deadline_s, lambda: is_fully_off(node))
    if not was_on:
        net.links(node, up=False)
        net.flush_instance_addresses(node)
    # The reaper does this too; its code may be older than this lab's.
    end_crash(node)
    return killed, was_on


def graceful_shutdown(node):
    """Ask the supervisor for an orderly shutdown (Redfish GracefulShutdown):
    SIGTERM to every process of the node, SIGKILL to what is left after its
    grace period, then power off. Returns False if the node was off."""
    rec = supervisor(node)
    if not rec:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec["pid"], signal.SIGUSR2)
    return True


def ipmi(node, *args, timeout=20):
    return lc.run(lc.ipmitool_argv(node) + list(args), timeout=timeout)


def power_on_via_ipmi(node):
    """Power on through the node's own BMC, ipmi_sim (it owns the machine)."""
    # A frozen cgroup would freeze the new boot's supervisor as it joins.
    end_crash(node)
    ipmi(node, "chassis", "power", "on")


def wait_on(node, old_boot_id, deadline_s=60.0):
    """Until a supervisor runs with a boot id other than old_boot_id and has
    brought the node up (power.json says on)."""
    def check():
        rec = supervisor(node)
        pj = lc.read_json(node.power_json, {})
        if rec and pj.get("state") == "on" and pj.get("boot_id") != old_boot_id:
            return pj.get("boot_id")
        return None
    return lc.wait_for(f"{node.name} to power on (new boot id, supervisor up; "
                       f"see {node.logs / 'supervisor.log'})", deadline_s, check)


def wait_off(node, deadline_s=60.0):
    lc.wait_for(f"{node.name} to be off (no supervisor, reaper done)", deadline_s,
                lambda: is_fully_off(node))


def request(node, *commands):
    """Queue commands for the running supervisor ("start nova-compute",
    "start sensor", "stop sensor") and wake it (SIGUSR1)."""
    rec = supervisor(node)
    if not rec:
        raise lc.LabError(f"{node.name} is powered off; power it on first "
                          f"(`lab fault power-on {node.name}`)")
    cmd_file = node.state / "supervisor.cmd"
    with lc.file_lock(node.state / ".supervisor.cmd.lock"):
        with open(cmd_file, "a") as f:
            for c in commands:
                f.write(c + "\n")
    os.kill(rec["pid"], signal.SIGUSR1)


def wait_proc(node, what, running, deadline_s=30.0):
    """Until the supervisor reports `what` (nova-compute, sensor) running
    (running=True) or not running; returns its record."""
    def check():
        procs = lc.read_json(node.procs_json, {}) or {}
        rec = procs.get(what) or {}
        alive = lc.record_alive(rec) if rec.get("pid") else False
        if alive == running:
            return rec or {"state": "not running"}
        return None
    return lc.wait_for(f"{what} on {node.name} to be {'running' if running else 'stopped'}",
                       deadline_s, check)


def now():
    return time.time()
