"""Host network and node plumbing: bridges, namespaces, veths, cgroups.

`net up` makes the two host bridges of CONTRACT.md ("Network") and an nftables
table that drops anything the host would route into or out of them, so no lab
packet can leave the machine even where ip_forward is on. A node is a netns
with `mgmt0`/`inst0` (veth peers on the bridges) and a cgroup v2 group; its
links stay down until its supervisor powers it on.
"""

import contextlib
import os
import secrets
from pathlib import Path

import labcommon as lc

NFT_TABLE = "vigil_lab"


def _link_exists(name, netns=None):
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return lc.run(argv, check=False).returncode == 0


def _netns_exists(name):
    return Path(f"/run/netns/{name}").exists()


def _sysctl(key, value, netns=None):
    path = Path("/proc/sys") / key.replace(".", "/")
    if netns:
        lc.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"], check=False)
    elif path.exists():
        with contextlib.suppress(OSError):
            path.write_text(str(value))


def net_up():
    """Bridges with the host addresses, and the no-forwarding guard. Idempotent."""
    done = []
    for br, ip in ((lc.MGMT_BRIDGE, lc.HOST_MGMT_IP), (lc.INST_BRIDGE, lc.HOST_INST_IP)):
        if not _link_exists(br):
            lc.made_add("link", name=br)
            lc.run(["ip", "link", "add", br, "type", "bridge"])
            done.append(f"bridge {br}")
        # No IPv6 on the lab bridges: nothing in the lab uses it, and it keeps
        # the bridges free of router solicitations and DAD chatter.
        _sysctl(f"net.ipv6.conf.{br}.disable_ipv6", 1)
        have = lc.run(["ip", "-4", "-o", "addr", "show", "dev", br]).stdout
        for line in have.splitlines():
            parts = line.split()
            cidr = parts[parts.index("inet") + 1] if "inet" in parts else None
            if cidr and cidr != f"{ip}/{lc.PREFIX}":
                # A lab bridge carries exactly the contract's address: an old
                # one (e.g. 203.0.113.1/24 from before the contract moved the
                # instance network) would route real traffic into the lab.
                lc.run(["ip", "addr", "del", cidr, "dev", br])
                done.append(f"removed stale {cidr} from {br}")
        if f"{ip}/{lc.PREFIX}" not in have:
            lc.run(["ip", "addr", "add", f"{ip}/{lc.PREFIX}", "dev", br])
            done.append(f"{ip}/{lc.PREFIX} on {br}")
        lc.run(["ip", "link", "set", br, "up"])
    if lc.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).returncode != 0:
        lc.made_add("nft", table=NFT_TABLE)
        # Safety: the lab's bridges are islands. Whatever ip_forward says, the
        # host routes nothing into or out of them. Traffic between two ports
        # of one lab bridge (node to node) is bridged, not routed; where
        # br_netfilter is loaded (bridge-nf-call-iptables = 1, as on this
        # host) it still passes this hook with the bridge as both iif and
        # oif, so that case is accepted first.
        rules = (f"table inet {NFT_TABLE} {{\n"
                 "  chain forward {\n"
                 "    type filter hook forward priority -10; policy accept;\n"
                 f'    iifname "{lc.MGMT_BRIDGE}" oifname "{lc.MGMT_BRIDGE}" accept\n'
                 f'    iifname "{lc.INST_BRIDGE}" oifname "{lc.INST_BRIDGE}" accept\n'
                 '    iifname "vlab-*" counter drop\n'
                 '    oifname "vlab-*" counter drop\n'
                 "  }\n"
                 "}\n")
        lc.run(["nft", "-f", "-"], input=rules)
        done.append(f"nft table inet {NFT_TABLE} (no forwarding to/from vlab-*)")
    return done


def net_down():
    """Remove the bridges and the nft table, but only those this lab made
    (made.json): a bridge someone else made is left alone."""
    done = []
    made_links = {e.get("name") for e in lc.made_list("link")}
    for br in (lc.MGMT_BRIDGE, lc.INST_BRIDGE):
        if br in made_links and _link_exists(br):
            lc.run(["ip", "link", "del", br])
            done.append(f"bridge {br}")
        lc.made_remove(lambda e, br=br: e.get("kind") == "link" and e.get("name") == br)
    if lc.made_list("nft") and \
            lc.run(["nft", "list", "table", "inet", NFT_TABLE], check=False).returncode == 0:
        lc.run(["nft", "delete", "table", "inet", NFT_TABLE])
        done.append(f"nft table inet {NFT_TABLE}")
    lc.made_remove(lambda e: e.get("kind") == "nft" and e.get("table") == NFT_TABLE)
    return done


def node_create(node):
    """Namespace, veths, addresses (links down: the node is off), cgroup,
    state directory and sensor token. Idempotent."""
    done = []
    for d in (node.state, node.faults, node.hang, node.logs):
        d.mkdir(parents=True, exist_ok=True)
    if not node.token_path.exists():
        # The per-node token the sensor presents to the decider (CONTRACT.md:
        # --token-file state/nodes/computeN/sensor.token).
        lc.write_atomic(node.token_path, secrets.token_hex(24) + "\n", 0o600)
    if lc.read_text(node.product_uuid_path) != node.system_uuid:
        lc.write_atomic(node.product_uuid_path, node.system_uuid + "\n")
        done.append(f"product_uuid {node.system_uuid}")
    done += ensure_netns(node.netns)
    for host_if, node_if, br, ip in (
        (node.host_mgmt_if, "mgmt0", lc.MGMT_BRIDGE, node.mgmt_ip),
        (node.host_inst_if, "inst0", lc.INST_BRIDGE, node.inst_ip),
    ):
        done += ensure_veth(node.netns, host_if, node_if, br, ip)
    done += ensure_cgroup(node.cgroup)
    return done


def ensure_netns(netns):
    """A network namespace with IPv6 off and lo up (nodes and controllers
    alike). Idempotent; returns what it made."""
    done = []
    if not _netns_exists(netns):
        lc.made_add("netns", name=netns)
        lc.run(["ip", "netns", "add", netns])
        done.append(f"netns {netns}")
    _sysctl("net.ipv6.conf.all.disable_ipv6", 1, netns=netns)
    _sysctl("net.ipv6.conf.default.disable_ipv6", 1, netns=netns)
    lc.run(["ip", "-n", netns, "link", "set", "lo", "up"])
    return done


def ensure_veth(netns, host_if, inner_if, bridge, ip):
    """A veth from `bridge` (host side `host_if`, up) into `netns` as
    `inner_if` with `ip`/PREFIX; the inner side's state is left alone (a
    powered-off node keeps it down). Idempotent; returns what it made."""
    done = []
    if not _link_exists(inner_if, netns):
        if _link_exists(host_if):
            lc.run(["ip", "link", "del", host_if])
        lc.made_add("link", name=host_if)
        lc.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", inner_if,
                "netns", netns])
        done.append(f"veth {host_if} <-> {netns}/{inner_if}")
    _sysctl(f"net.ipv6.conf.{host_if}.disable_ipv6", 1)
    lc.run(["ip", "link", "set", host_if, "master", bridge, "up"])
    have = lc.run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", inner_if]).stdout
    if f"{ip}/{lc.PREFIX}" not in have:
        lc.run(["ip", "-n", netns, "addr", "add", f"{ip}/{lc.PREFIX}", "dev", inner_if])
    return done


def ensure_cgroup(cgroup):
    """A cgroup v2 group under the lab's parent, recorded for `lab down`.
    Idempotent; returns what it made."""
    if cgroup.exists():
        return []
    if not lc.CGROUP2.exists():
        raise lc.LabError(f"no cgroup v2 hierarchy at {lc.CGROUP2} (see notes/ebpf.md)")
    lc.CGROUP_PARENT.mkdir(exist_ok=True)
    lc.made_add("cgroup", path=str(lc.CGROUP_PARENT))
    lc.made_add("cgroup", path=str(cgroup))
    cgroup.mkdir()
    return [f"cgroup {cgroup}"]


def links(node, up):
    """Bring the node's links up (power on) or down (power loss)."""
    state = "up" if up else "down"
    argv = ["ip", "-n", node.netns, "link", "set"]
    lc.run(argv + ["inst0", state], check=False)
    if up and node.fault_flag("mgmt-link-down").exists():
        return  # a pulled cable stays pulled across a power cycle
    lc.run(argv + ["mgmt0", state], check=False)
    if up:
        mgmt_route(node)


def mgmt_route(node):
    # The default route goes with mgmt0 whenever the link goes down.
    lc.run(["ip", "-n", node.netns, "route", "replace", "default", "via", lc.HOST_MGMT_IP,
            "dev", "mgmt0"], check=False)


def flush_instance_addresses(node):
    """Remove the guests' /32s from inst0: after a power loss no guest runs
    there, so nothing may answer for them when the links come back."""
    out = lc.run(["ip", "-n", node.netns, "-4", "-o", "addr", "show", "dev", "inst0"],
                 check=False).stdout
    gone = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            cidr = parts[parts.index("inet") + 1]
            if cidr.endswith("/32"):
                lc.run(["ip", "-n", node.netns, "addr", "del", cidr, "dev", "inst0"], check=False)
                gone.append(cidr)
    return gone


def node_destroy(node):
    """Remove the node's namespace, veths and cgroup (its processes must be
    gone: call this after the node is powered off)."""
    done = []
    if _netns_exists(node.netns):
        lc.run(["ip", "netns", "del", node.netns])
        done.append(f"netns {node.netns}")
    for host_if in (node.host_mgmt_if, node.host_inst_if):
        if _link_exists(host_if):
            lc.run(["ip", "link", "del", host_if], check=False)
    if node.cgroup.exists():
        kill_cgroup(node.cgroup, deadline_s=10)
        try:
            node.cgroup.rmdir()
            done.append(f"cgroup {node.cgroup}")
        except OSError as e:
            raise lc.LabError(f"cannot remove cgroup {node.cgroup}: {e} "
                              f"(still in it: {lc.cgroup_pids(node.cgroup)})") from e
    lc.made_remove(lambda e: (e.get("kind") == "netns" and e.get("name") == node.netns)
                   or (e.get("kind") == "link" and e.get("name") in (node.host_mgmt_if, node.host_inst_if))
                   or (e.get("kind") == "cgroup" and e.get("path") == str(node.cgroup)))
    return done


def kill_cgroup(cg, deadline_s=15.0):
    """cgroup.kill until the group is empty: every process in it gets SIGKILL
    at once, as on power loss. Returns how many processes were in it."""
    import time

    cg = Path(cg)
    first = lc.cgroup_pids(cg)
    end = time.monotonic() + deadline_s
    while True:
        pids = lc.cgroup_pids(cg)
        if not pids:
            return len(first)
        try:
            (cg / "cgroup.kill").write_text("1")
        except OSError as e:
            if not cg.exists():
                return len(first)
            raise lc.LabError(f"cgroup.kill on {cg} failed: {e}") from e
        if time.monotonic() > end:
            states = {p: lc.proc_state(p) for p in pids}
            raise lc.LabError(f"processes survive cgroup.kill on {cg} after {deadline_s:.0f}s: "
                              f"{states} (D = stuck in uninterruptible I/O)")
        time.sleep(0.05)


def remove_cgroup_parent():
    with contextlib.suppress(OSError):
        if lc.CGROUP_PARENT.exists() and not any(p.is_dir() for p in lc.CGROUP_PARENT.iterdir()):
            lc.CGROUP_PARENT.rmdir()
    lc.made_remove(lambda e: e.get("kind") == "cgroup" and e.get("path") == str(lc.CGROUP_PARENT))


def setns_net(netns):
    """Move the calling thread (single-threaded process) into a named netns.

    Python 3.11 has no os.setns; this is setns(2) through libc.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def join_cgroup(cg, pid=None):
    (Path(cg) / "cgroup.procs").write_text(str(pid or os.getpid()))


def cgroup_frozen(cg):
    """True if the group's cgroup.events says every task in it is frozen."""
    try:
        return "frozen 1" in (Path(cg) / "cgroup.events").read_text().splitlines()
    except OSError:
        return False


def freeze_cgroup(cg, frozen, deadline_s=10.0):
    """cgroup.freeze on (every task stops where it is, as in a dead kernel;
    SIGKILL and cgroup.kill still work) or off. Waits until cgroup.events
    agrees when freezing; a task in uninterruptible I/O delays that."""
    cg = Path(cg)
    if not cg.exists():
        return
    try:
        (cg / "cgroup.freeze").write_text("1" if frozen else "0")
    except OSError as e:
        raise lc.LabError(f"cannot write cgroup.freeze of {cg}: {e}") from e
    if frozen:
        lc.wait_for(f"every task of {cg} to be frozen (cgroup.events; a task in D state "
                    "freezes only once its I/O completes)", deadline_s, lambda: cgroup_frozen(cg))


def freeze_requested(cg):
    return lc.read_text(Path(cg) / "cgroup.freeze") == "1"
