"""Faults on demand: `lab fault KIND NODE` (CONTRACT.md "Faults").

Each fault is idempotent and returns what it did, one line per step. Faults
that persist are flagged in state/nodes/computeN/faults/ so `status` shows
them and `heal` can undo them; everything they make (FUSE mounts, loop
devices, their daemon) is recorded in made.json for `lab down`.

hang-nova-compute, precisely:
  1. the node's stalled disk: a FUSE filesystem (stalldisk.py, on the host,
     lab venv + fusepy) with one 16 MiB `disk.img`, mounted with direct_io at
     state/nodes/computeN/hang/mnt, and a loop device over that file;
  2. the stall flag (state/nodes/computeN/hang/stall) is created: from now on
     the FUSE daemon does not answer reads or writes;
  3. nova-compute is sent SIGRTMIN+5. hang_hook/vigil_lab_hang_hook.py, loaded
     into nova-compute's own interpreter at start, handles it on the main
     thread by reading one block of the loop device with O_DIRECT. That read
     waits on the FUSE daemon, so nova-compute's main thread - the one that runs
     all of its eventlet green threads, the service heartbeat included - is in
     D state (submit_bio_wait) and nova-compute stops reporting. Its pid,
     command line and cgroup are nova-compute's own; the guests keep running.
  4. the fault waits until /proc/<pid>/stat says D, then reports.
  Fallback (only if the hook is not armed in that nova-compute, e.g. it was
  started without the lab's PYTHONPATH): nova-compute is SIGSTOPped (it stops
  reporting) and a stand-in whose command line starts with `nova-compute`
  (dd with argv[0] = "nova-compute", in the node's cgroup and netns) does the
  same O_DIRECT read and sits in D. The report says which mode was used.
unhang-nova-compute removes the stall flag: the read returns and nova-compute
carries on (fallback: the stand-in exits and nova-compute gets SIGCONT).
"""

import contextlib
import ipaddress
import json
import os
import random
import signal
import subprocess
import time

import labcommon as lc
import net
import power

KINDS = ("power-off", "power-on", "kill-nova-compute", "hang-nova-compute",
         "unhang-nova-compute", "mgmt-link-down", "mgmt-link-up", "kill-sensor",
         "isolate", "unisolate", "kdump", "kdump-send", "hard-hang", "bmc-lies",
         "bmc-truth", "heal")

ISOLATE_TABLE = "vlab_isolate"
DISK_MIB = 16


def run(kind, node, **opts):
    """Run fault `kind` on `node`; `opts` are the kind's own options
    (kdump: dump_secs, to)."""
    if kind not in KINDS:
        raise lc.LabError(f"unknown fault {kind!r}; one of: {', '.join(KINDS)}")
    if not node.state.exists():
        raise lc.LabError(f"{node.name} is not a node of this lab (no {node.state}); "
                          "`lab status` lists them")
    fn = globals()["f_" + kind.replace("-", "_")]
    return fn(node, **opts)


def _proc(node, what):
    """The running process `what` of the node as the supervisor recorded it."""
    procs = lc.read_json(node.procs_json, {}) or {}
    rec = procs.get(what) or {}
    return rec if rec.get("pid") and lc.record_alive(rec) else None


# --- power ------------------------------------------------------------------

def f_power_off(node):
    if power.is_fully_off(node):
        return [f"{node.name} is already off"]
    old = power.boot_id(node)
    t0 = time.monotonic()
    killed, _ = power.cut(node)
    return [f"{node.name}: power lost: cgroup.kill on {node.cgroup} ({killed} processes), "
            f"links down, guest addresses removed; boot {old} ended "
            f"({time.monotonic() - t0:.2f}s)"]


def f_power_on(node):
    if power.is_on(node):
        return [f"{node.name} is already on (boot id {power.boot_id(node)})"]
    power.wait_off(node, 60)
    old = power.boot_id(node)
    t0 = time.monotonic()
    power.power_on_via_ipmi(node)
    new = power.wait_on(node, old)
    return [f"{node.name}: powered on through its IPMI BMC; new boot id {new} "
            f"({time.monotonic() - t0:.2f}s); nova-compute starting"]


# --- processes --------------------------------------------------------------

def f_kill_nova_compute(node):
    rec = _proc(node, "nova-compute")
    if not rec:
        return [f"nova-compute is not running on {node.name} (nothing to kill)"]
    os.kill(rec["pid"], signal.SIGKILL)
    hung = lc.proc_state(rec["pid"]) == "D"
    msg = f"{node.name}: SIGKILL to nova-compute (pid {rec['pid']})"
    if hung:
        return [msg + "; it is in D state (hung), so it dies only when its I/O completes "
                "(`unhang-nova-compute`)"]
    power.wait_proc(node, "nova-compute", running=False, deadline_s=15)
    return [msg + "; it is gone and stays gone until `heal`"]


def f_kill_sensor(node):
    rec = _proc(node, "sensor")
    if not rec:
        return [f"no sensor is running on {node.name} (nothing to kill)"]
    os.kill(rec["pid"], signal.SIGKILL)
    power.wait_proc(node, "sensor", running=False, deadline_s=15)
    return [f"{node.name}: SIGKILL to vigil-sensor (pid {rec['pid']}); it stays gone until "
            f"`heal` or `sensor start`"]


# --- hang -------------------------------------------------------------------

def _mounted(path):
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == str(path) for line in f)
    except OSError:
        return False


def _loops_backing(path):
    # Listing every loop device and matching the backing file's name, rather
    # than `losetup -j PATH`: that stats PATH, which fails on a FUSE mount
    # whose server died ("Transport endpoint is not connected").
    out = lc.run(["losetup", "-n", "-l", "-O", "NAME,BACK-FILE"], check=False).stdout
    loops = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].removesuffix(" (deleted)").strip() == str(path):
            loops.append(parts[0])
    return loops


def _clear_stale(node, mnt, img, daemon):
    """A mount left by a stalldisk server that is gone (a crash, a killed
    lab) answers nothing: detach its loop devices and lazily unmount it, so
    the rig can be made anew. Returns what it did."""
    if not _mounted(mnt) or lc.daemon_alive(daemon):
        return []
    done = []
    for dev in _loops_backing(img):
        lc.run(["losetup", "-d", dev], check=False)
        done.append(f"stale loop {dev} detached")
    lc.run(["umount", "-l", str(mnt)], check=False)
    done.append(f"stale FUSE mount {mnt} (server gone) unmounted")
    return done


def rig_up(node):
    """The stalled-disk rig of one node (idempotent); returns the loop device."""
    mnt = node.hang / "mnt"
    img = mnt / "disk.img"
    steps = []
    daemon = f"{node.name}-stalldisk"
    steps += _clear_stale(node, mnt, img, daemon)
    if not _mounted(mnt):
        if lc.daemon_alive(daemon):
            lc.stop_daemon(daemon)
        mnt.mkdir(parents=True, exist_ok=True)
        lc.made_add("mount", path=str(mnt))
        py = lc.tools_python()
        lc.spawn_daemon(daemon, [py, str(lc.NODES_DIR / "stalldisk.py"), str(mnt),
                                 str(node.hang / "stall"), str(DISK_MIB)],
                        node.logs / "stalldisk.log")
        log = node.logs / "stalldisk.log"

        def mounted():
            if not lc.daemon_alive(daemon):
                raise lc.LabError(f"stalldisk (FUSE) for {node.name} exited; {log}:\n"
                                  + lc.tail(log))
            return _mounted(mnt) and img.exists()
        lc.wait_for(f"FUSE stalled disk at {mnt}", 15, mounted)
        steps.append(f"FUSE disk mounted at {mnt}")
    loops = _loops_backing(img)
    if not loops:
        lc.made_add("loop", file=str(img))
        dev = lc.run(["losetup", "-f", "--show", str(img)]).stdout.strip()
        steps.append(f"loop device {dev} over {img}")
    else:
        dev = loops[0]
    lc.write_atomic(node.hang / "device", dev + "\n")
    return dev, steps


def rig_down(node):
    """Remove the node's stalled-disk rig (loop device, mount, FUSE daemon)."""
    mnt = node.hang / "mnt"
    img = mnt / "disk.img"
    done = []
    power.release_stall(node)
    done += _clear_stale(node, mnt, img, f"{node.name}-stalldisk")
    if _mounted(mnt):
        for dev in _loops_backing(img):
            lc.run(["losetup", "-d", dev], check=False)
            done.append(f"loop {dev}")
    lc.made_remove(lambda e: e.get("kind") == "loop" and e.get("file") == str(img))
    if _mounted(mnt):
        if lc.run(["umount", str(mnt)], check=False).returncode != 0:
            lc.run(["umount", "-l", str(mnt)], check=False)
        done.append(f"mount {mnt}")
    lc.made_remove(lambda e: e.get("kind") == "mount" and e.get("path") == str(mnt))
    if lc.stop_daemon(f"{node.name}-stalldisk"):
        done.append("stalldisk daemon")
    with contextlib.suppress(OSError):
        (node.hang / "device").unlink()
    return done


def _hang_info(node):
    return lc.read_json(node.fault_flag("hang"))


def f_hang_nova_compute(node):
    info = _hang_info(node)
    if info and lc.proc_state(info["pid"]) == "D":
        return [f"nova-compute on {node.name} is already hung since "
                f"{time.strftime('%H:%M:%S', time.localtime(info['since']))} "
                f"(pid {info['pid']} in D, mode {info['mode']})"]
    rec = _proc(node, "nova-compute")
    if not rec:
        raise lc.LabError(f"nova-compute is not running on {node.name}; cannot hang it "
                          f"(`lab fault heal {node.name}` starts it)")
    pid = rec["pid"]
    dev, steps = rig_up(node)
    (node.hang / "stall").touch()
    steps.append(f"disk stalled ({node.hang / 'stall'})")
    # A different block each time, so no cache anywhere can answer it.
    offset = random.randrange(DISK_MIB * 256) * 4096
    lc.write_atomic(node.hang / "offset", f"{offset}\n")
    hooked = lc.read_text(node.hang / "hook.pid") == str(pid)
    if hooked:
        mode = "nova-compute's own main thread (SIGRTMIN+5 -> O_DIRECT read, vigil_lab_hang_hook)"
        os.kill(pid, signal.SIGRTMIN + lc.HANG_SIGNAL_OFFSET)
        blocked = pid
    else:
        mode = ("stand-in: nova-compute SIGSTOPped, a process named nova-compute (dd) blocked "
                "in its place (the hook was not armed in this nova-compute)")
        os.kill(pid, signal.SIGSTOP)
        blocked = _spawn_standin(node, dev, offset)
    lc.write_json(node.fault_flag("hang"), {"pid": blocked, "nova_compute": pid, "mode": mode,
                                            "device": dev, "since": time.time()})
    lc.wait_for(f"pid {blocked} on {node.name} to block in D state on {dev}", 30,
                lambda: lc.proc_state(blocked) == "D")
    wchan = lc.read_text(f"/proc/{blocked}/wchan", "?")
    steps.append(f"nova-compute hung: pid {blocked} in D state ({wchan}) reading {dev}; "
                 f"mode: {mode}")
    return [f"{node.name}: " + s for s in steps]


def _spawn_standin(node, dev, offset):
    def enter_node():
        net.join_cgroup(node.cgroup)
        net.setns_net(node.netns)
    p = subprocess.Popen(  # noqa: S603
        ["nova-compute", f"if={dev}", "of=/dev/null", "bs=4096", "count=1",
         f"skip={offset // 4096}", "iflag=direct"],
        executable="/bin/dd", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, preexec_fn=enter_node, start_new_session=True)
    p.returncode = 0  # it outlives this command; unhang or power loss ends it
    return p.pid


def f_unhang_nova_compute(node):
    info = _hang_info(node)
    power.release_stall(node)
    if not info:
        return [f"nova-compute on {node.name} is not hung (stall flag cleared anyway)"]
    pid = info["pid"]
    lc.wait_for(f"pid {pid} on {node.name} to leave D state", 30,
                lambda: lc.proc_state(pid) != "D")
    steps = [f"{node.name}: disk answers again; pid {pid} left D state"]
    if info.get("nova_compute") != pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["nova_compute"], signal.SIGCONT)
        steps.append(f"{node.name}: SIGCONT to nova-compute (pid {info['nova_compute']})")
    node.fault_flag("hang").unlink(missing_ok=True)
    return steps


# --- network ----------------------------------------------------------------

def f_mgmt_link_down(node):
    node.faults.mkdir(parents=True, exist_ok=True)
    already = node.fault_flag("mgmt-link-down").exists()
    node.fault_flag("mgmt-link-down").touch()
    lc.run(["ip", "-n", node.netns, "link", "set", "mgmt0", "down"])
    if already:
        return [f"{node.name}: mgmt0 was already down"]
    return [f"{node.name}: mgmt0 down (management network cut; inst0 and the guests' "
            "addresses stay up)"]


def f_mgmt_link_up(node):
    flag = node.fault_flag("mgmt-link-down")
    was = flag.exists()
    flag.unlink(missing_ok=True)
    if not power.is_on(node):
        return [f"{node.name}: mgmt-link-down cleared; the node is off, so mgmt0 comes up "
                "at its next power on"]
    lc.run(["ip", "-n", node.netns, "link", "set", "mgmt0", "up"])
    net.mgmt_route(node)
    return [f"{node.name}: mgmt0 up, default route via {lc.HOST_MGMT_IP}"
            + ("" if was else " (it was not down)")]


def _isolated(node):
    return lc.run(["ip", "netns", "exec", node.netns, "nft", "list", "table", "inet",
                   ISOLATE_TABLE], check=False).returncode == 0


def f_isolate(node):
    if _isolated(node):
        return [f"{node.name} is already isolated from the controller"]
    # Inside the node's netns (it disappears with the netns): drop every
    # packet between mgmt0 and the controller's address, both ways. Other
    # nodes and the instance network (inst0) are untouched, so the guests
    # still answer ping from the host.
    rules = (f"table inet {ISOLATE_TABLE} {{\n"
             "  chain input { type filter hook input priority -10; policy accept;\n"
             f'    iifname "mgmt0" ip saddr {lc.HOST_MGMT_IP} counter drop\n  }}\n'
             "  chain output { type filter hook output priority -10; policy accept;\n"
             f'    oifname "mgmt0" ip daddr {lc.HOST_MGMT_IP} counter drop\n  }}\n'
             "}\n")
    lc.run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=rules)
    lc.write_json(node.fault_flag("isolated"), {"since": time.time()})
    return [f"{node.name}: isolated from the controller: mgmt0 <-> {lc.HOST_MGMT_IP} dropped "
            f"both ways (nft table {ISOLATE_TABLE} in {node.netns}); guests still answer"]


def f_unisolate(node):
    node.fault_flag("isolated").unlink(missing_ok=True)
    if not _isolated(node):
        return [f"{node.name} was not isolated"]
    lc.run(["ip", "netns", "exec", node.netns, "nft", "delete", "table", "inet", ISOLATE_TABLE])
    return [f"{node.name}: controller reachable again (nft table {ISOLATE_TABLE} removed)"]


# --- kernel crash with kdump, hard hang ---------------------------------------

FENCE_KDUMP_SEND = "/usr/libexec/fence-agents/fence_kdump_send"
KDUMP_PORT = 7410
MAX_DUMP_SECS = 3600


def parse_targets(to):
    """--to ADDR[:PORT] values -> {port: [addr, ...]} (default: the host side
    of the management network, port 7410: where a decider listens)."""
    by_port = {}
    for t in to or [f"{lc.HOST_MGMT_IP}:{KDUMP_PORT}"]:
        addr, _, port = t.partition(":")
        try:
            ipaddress.IPv4Address(addr)
            port = int(port) if port else KDUMP_PORT
        except ValueError as e:
            raise lc.LabError(f"--to {t!r}: not IPV4[:PORT] ({e})") from None
        if not 0 < port < 65536:
            raise lc.LabError(f"--to {t!r}: port {port} out of range")
        by_port.setdefault(port, []).append(addr)
    return by_port


def _crash_freeze(node):
    """Stop every task of the node where it is (supervisor, nova-compute,
    guests, sensor): what a dead kernel does to its processes. The BMCs and
    the node's reaper run on the host, so the BMCs still read On."""
    net.freeze_cgroup(node.cgroup, True)
    # A task blocked on the stalled disk cannot freeze until its I/O
    # completes; freeze first so that, released, it stops at once.
    power.release_stall(node)
    lc.wait_for(f"every task of {node.cgroup} to be frozen", 10,
                lambda: net.cgroup_frozen(node.cgroup))


# How long the lab's crash kernel takes to boot and send its first message
# (real ones take 10-60 s): Nova's last report from the dying kernel is
# seen before it, as on a real machine.
KDUMP_BOOT_SECS = 5


def f_kdump(node, dump_secs=10, to=None):
    """Kernel panic, the crash kernel dumping: the node's tasks frozen, its
    guests' addresses gone (they died with the kernel), its links up (the
    crash kernel's network: the management address answers ping), and
    Debian's fence_kdump_send in its netns (not its cgroup) announcing the
    dump to each target every second for dump_secs, then stopping."""
    if not power.is_on(node):
        raise lc.LabError(f"{node.name} is off: a kernel crash needs a running node "
                          f"(`lab fault power-on {node.name}` first)")
    # Refused before anything is frozen.
    if not 1 <= dump_secs <= MAX_DUMP_SECS:
        raise lc.LabError(f"--dump-secs {dump_secs}: between 1 and {MAX_DUMP_SECS}")
    parse_targets(to)
    if not os.access(FENCE_KDUMP_SEND, os.X_OK):
        raise lc.LabError(f"{FENCE_KDUMP_SEND} missing: apt-get install fence-agents")
    if node.fault_flag("kdump").exists():
        info = lc.read_json(node.fault_flag("kdump"), {}) or {}
        return [f"{node.name} is already in its crash kernel since "
                f"{time.strftime('%H:%M:%S', time.localtime(info.get('since', 0)))} "
                f"(dump to {', '.join(info.get('to') or [])})"]
    steps = []
    steps += power.end_crash(node, thaw=False)  # a hard hang turning into a panic
    _crash_freeze(node)
    steps.append(f"kernel panic: every task of {node.cgroup} frozen (supervisor, nova-compute, "
                 "guests, sensor); BMCs still read On")
    gone = net.flush_instance_addresses(node)
    steps.append("guest addresses removed from inst0: " + (" ".join(gone) or "none"))
    # `ip netns exec` execs: the recorded pid is fence_kdump_send's own, in
    # the node's netns (source address: its interface toward the target) but
    # in the caller's cgroup, so it is not frozen.
    senders, targets = _send_kdump(node, dump_secs, to, boot_secs=KDUMP_BOOT_SECS)
    lc.write_json(node.fault_flag("kdump"), {"since": time.time(), "dump_secs": dump_secs,
                                             "boot_secs": KDUMP_BOOT_SECS,
                                             "to": targets, "senders": senders})
    steps.append(f"fence_kdump_send in {node.netns} (pid {', '.join(map(str, senders))}): "
                 f"after {KDUMP_BOOT_SECS} s (the crash kernel booting), "
                 f"{dump_secs} message(s), one a second, to {', '.join(targets)}; then the "
                 "dump is written and it stops (the node stays frozen until power-off or heal)")
    return [f"{node.name}: " + s for s in steps]


def _send_kdump(node, dump_secs, to, boot_secs=0):
    """Start Debian's fence_kdump_send in the node's netns (not its cgroup)
    toward each target, one message a second for dump_secs, the first after
    boot_secs; returns (pids, targets)."""
    if not 1 <= dump_secs <= MAX_DUMP_SECS:
        raise lc.LabError(f"--dump-secs {dump_secs}: between 1 and {MAX_DUMP_SECS}")
    by_port = parse_targets(to)
    if not os.access(FENCE_KDUMP_SEND, os.X_OK):
        raise lc.LabError(f"{FENCE_KDUMP_SEND} missing: apt-get install fence-agents")
    senders, targets = [], []
    for i, (port, addrs) in enumerate(sorted(by_port.items())):
        name = f"{node.name}-kdump-{i}"
        argv = ["ip", "netns", "exec", node.netns, FENCE_KDUMP_SEND,
                "-p", str(port), "-i", "1", "-c", str(dump_secs), "-f", "ipv4", *addrs]
        if boot_secs:
            # The crash kernel boots before it can send; `exec` keeps the
            # recorded pid the sender's.
            argv = ["sh", "-c", f'sleep {int(boot_secs)} && exec "$@"', "kdump-boot", *argv]
        rec = lc.spawn_daemon(name, argv, node.logs / "fence_kdump_send.log")
        senders.append(rec["pid"])
        targets += [f"{a}:{port}" for a in addrs]
    return senders, targets


def f_kdump_send(node, dump_secs=10, to=None):
    """fence_kdump messages from the node's management address while the
    node runs on: a forged or misdirected announcement (anyone on the
    management network can send one), which must never fence a live node."""
    if not power.is_on(node):
        raise lc.LabError(f"{node.name} is off; `kdump-send` forges messages from a running node")
    senders, targets = _send_kdump(node, dump_secs, to)
    lc.write_json(node.fault_flag("kdump-send"), {"since": time.time(), "to": targets,
                                                  "senders": senders})
    return [f"{node.name}: fence_kdump_send in {node.netns} (pid "
            f"{', '.join(map(str, senders))}) while the node runs: {dump_secs} message(s), "
            f"one a second, to {', '.join(targets)}"]


def f_bmc_lies(node):
    """The node's Redfish BMC reads PowerState Off while the node runs
    (its IPMI BMC still tells the truth)."""
    lc.write_json(node.fault_flag("bmc-lies"), {"since": time.time()})
    return [f"{node.name}: its Redfish BMC now reads PowerState Off; the node keeps running"]


def f_bmc_truth(node):
    with contextlib.suppress(FileNotFoundError):
        node.fault_flag("bmc-lies").unlink()
    return [f"{node.name}: its Redfish BMC reads the real power state again"]


def f_hard_hang(node):
    """Everything stops and nothing answers: the node's tasks frozen and a
    drop-everything firewall in its netns (inet and arp, loopback excepted),
    so its management, instance and guest addresses are silent while its
    links stay up (a hung kernel keeps carrier). The BMCs still read On."""
    if not power.is_on(node):
        raise lc.LabError(f"{node.name} is off: a hang needs a running node "
                          f"(`lab fault power-on {node.name}` first)")
    if node.fault_flag("hard-hang").exists():
        return [f"{node.name} is already hung hard"]
    steps = power.end_crash(node, thaw=False)  # a crash kernel that hangs too
    rules = (f"table inet {power.HANG_TABLE} {{\n"
             "  chain input { type filter hook input priority -300; policy drop;\n"
             '    iifname "lo" accept\n  }\n'
             "  chain output { type filter hook output priority -300; policy drop;\n"
             '    oifname "lo" accept\n  }\n'
             "}\n"
             f"table arp {power.HANG_TABLE} {{\n"
             "  chain input { type filter hook input priority 0; policy drop; }\n"
             "  chain output { type filter hook output priority 0; policy drop; }\n"
             "}\n")
    lc.run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=rules)
    lc.write_json(node.fault_flag("hard-hang"), {"since": time.time()})
    steps.append(f"every packet in and out of {node.netns} dropped (nft inet+arp "
                 f"{power.HANG_TABLE}; links stay up)")
    _crash_freeze(node)
    steps.append(f"every task of {node.cgroup} frozen; BMCs still read On")
    return [f"{node.name}: " + s for s in steps]


# --- heal -------------------------------------------------------------------

def f_heal(node):
    """Undo every fault on the node: disk answers, links up, not isolated,
    powered on, nova-compute (and the sensor, if configured) running."""
    out = []
    if node.fault_flag("bmc-lies").exists():
        out += f_bmc_truth(node)
    if node.fault_flag("kdump-send").exists():
        # Forged messages from a running node: stop them, touch nothing else.
        for name in power.kdump_senders(node):
            if lc.stop_daemon(name, deadline_s=2):
                out.append(f"{node.name}: fence_kdump_send {name} stopped")
        node.fault_flag("kdump-send").unlink()
    if node.fault_flag("kdump").exists() or power.kdump_senders(node):
        # After a crash the machine reboots (its guests died with the
        # kernel): power loss, which also ends the dump; no thaw before it,
        # or nova-compute would report once more.
        if power.is_on(node):
            out += f_power_off(node)
        out += [f"{node.name}: " + s for s in power.end_crash(node)]
    elif node.fault_flag("hard-hang").exists() or net.freeze_requested(node.cgroup):
        out += [f"{node.name}: " + s for s in power.end_crash(node)]
    if _hang_info(node) or (node.hang / "stall").exists():
        out += f_unhang_nova_compute(node)
    if node.fault_flag("mgmt-link-down").exists():
        out += f_mgmt_link_up(node)
    if _isolated(node) or node.fault_flag("isolated").exists():
        out += f_unisolate(node)
    if not power.is_on(node):
        out += f_power_on(node)
    want = ["nova-compute"] + (["sensor"] if node.sensor_flag.exists() else [])
    missing = [w for w in want if not _proc(node, w)]
    if missing:
        power.request(node, *[f"start {w}" for w in missing])
        for w in missing:
            rec = power.wait_proc(node, w, running=True, deadline_s=30)
            out.append(f"{node.name}: started {w} (pid {rec.get('pid')})")
    if not out:
        out.append(f"{node.name}: nothing to heal")
    return out


def active(node):
    """The faults in force on a node, for `status`."""
    found = []
    info = _hang_info(node)
    if info:
        found.append("hung")
    for flag, name in (("mgmt-link-down", "mgmt-link-down"), ("isolated", "isolated"),
                       ("kdump", "kdump"), ("hard-hang", "hard-hang"),
                       ("kdump-send", "kdump-send"), ("bmc-lies", "bmc-lies")):
        if node.fault_flag(flag).exists():
            found.append(name)
    return found


def describe(kind, node):
    return json.dumps({"fault": kind, "node": node.name})
