"""Lab controllers: `lab controllers up|down`, `lab controller exec`, their faults.

A controller `ctlN` (N = 1..5) is a "machine" for a decider (issue 14, decider
HA): netns `vlab-ctlN` whose `mgmt0` = 198.51.100.(200+N)/24 is a veth peer
(`vlab-cN`) on the lab's management bridge, default route via 198.51.100.1,
and cgroup v2 group `/sys/fs/cgroup/unified/vigil-lab/ctlN`. In it runs one
etcd member `ctlN` (client http://198.51.100.(200+N):2379, peer :2380) of one
cluster made of every controller; a test starts its decider there with
`lab controller exec ctlN -- vigil-decider ...`.

Everything made is recorded in made.json (netns, link, cgroup, proc), so
`lab down` undoes it even after a crash. The etcd member is a daemon of the
node half (record run/nodes/daemons/ctlN-etcd.json: pid + start time, never
run/*.pid, which `cloud` reads as its own services).

Faults (`lab fault KIND ctlN`): power-off (cgroup.kill of everything in it,
mgmt0 down), power-on (mgmt0 up, etcd restarted on its data), partition /
unpartition (nft table in its netns: mgmt0 <-> 198.51.100.201-205 dropped both
ways; Nova, the computes and the BMCs stay reachable), etcd-stop / etcd-start
(the member only), heal (all of that undone).
"""

import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import labcommon as lc
import net

KINDS = ("power-off", "power-on", "partition", "unpartition", "etcd-stop", "etcd-start",
         "heal")
PARTITION_TABLE = "vlab_partition"
CLUSTER_TOKEN = "vigil-lab-etcd"
HEALTH_DEADLINE_S = 60.0


def etcd_env():
    # etcdctl is gRPC, which honours *_proxy: lab addresses never go through one.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["ETCDCTL_API"] = "3"
    return env


# --- one controller's plumbing -------------------------------------------------

def _netns_exists(name):
    return Path(f"/run/netns/{name}").exists()


def create(ctl):
    """Namespace, veth on vlab-mgmt, address, routes, cgroup. Idempotent; the
    link is left up unless the controller is powered off (fault flag)."""
    done = []
    for d in (ctl.state, ctl.faults):
        d.mkdir(parents=True, exist_ok=True)
    done += net.ensure_netns(ctl.netns)
    done += net.ensure_veth(ctl.netns, ctl.host_if, "mgmt0", lc.MGMT_BRIDGE, ctl.ip)
    if not ctl.fault_flag("power-off").exists():
        link(ctl, up=True)
    done += net.ensure_cgroup(ctl.cgroup)
    return done


def link(ctl, up):
    lc.run(["ip", "-n", ctl.netns, "link", "set", "mgmt0", "up" if up else "down"], check=False)
    if up:
        lc.run(["ip", "-n", ctl.netns, "route", "replace", "default", "via", lc.HOST_MGMT_IP,
                "dev", "mgmt0"], check=False)


def destroy(ctl):
    """Everything of one controller: its processes, netns, veth, cgroup, state."""
    done = []
    if ctl.cgroup.exists():
        n = net.kill_cgroup(ctl.cgroup, deadline_s=10)
        if n:
            done.append(f"{ctl.name}: {n} process(es) killed")
    if lc.stop_daemon(ctl.etcd_daemon):
        done.append(f"{ctl.name}: etcd stopped")
    if _netns_exists(ctl.netns):
        lc.run(["ip", "netns", "del", ctl.netns])
        done.append(f"netns {ctl.netns}")
    if net._link_exists(ctl.host_if):
        lc.run(["ip", "link", "del", ctl.host_if], check=False)
    if ctl.cgroup.exists():
        try:
            ctl.cgroup.rmdir()
            done.append(f"cgroup {ctl.cgroup}")
        except OSError as e:
            raise lc.LabError(f"cannot remove cgroup {ctl.cgroup}: {e} "
                              f"(still in it: {lc.cgroup_pids(ctl.cgroup)})") from e
    lc.made_remove(lambda e: (e.get("kind") == "netns" and e.get("name") == ctl.netns)
                   or (e.get("kind") == "link" and e.get("name") == ctl.host_if)
                   or (e.get("kind") == "cgroup" and e.get("path") == str(ctl.cgroup)))
    if ctl.state.exists():
        shutil.rmtree(ctl.state, ignore_errors=True)
        done.append(f"{ctl.name}: etcd data {ctl.etcd_dir} removed")
    return done


# --- etcd ------------------------------------------------------------------------

def etcd_record(ctl):
    rec = lc.read_json(lc.daemon_record_path(ctl.etcd_daemon))
    return rec if lc.record_alive(rec) else None


def etcd_argv(ctl, members):
    fresh = not (ctl.etcd_dir / "member").exists()
    cluster = ",".join(f"{m.name}={m.etcd_peer_url}" for m in members)
    return ["etcd", "--name", ctl.name, "--data-dir", str(ctl.etcd_dir),
            "--listen-client-urls", f"{ctl.etcd_client_url},http://127.0.0.1:{lc.ETCD_CLIENT_PORT}",
            "--advertise-client-urls", ctl.etcd_client_url,
            "--listen-peer-urls", ctl.etcd_peer_url,
            "--initial-advertise-peer-urls", ctl.etcd_peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", CLUSTER_TOKEN,
            "--initial-cluster-state", "new" if fresh else "existing",
            # Fast failover: a leader is missed after 1 s.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--logger", "zap", "--log-outputs", "stderr"]


def start_etcd(ctl, members):
    """Start the member in the controller's netns and cgroup (no wait).
    Returns its record, or None if it already runs."""
    if etcd_record(ctl):
        return None
    if not shutil.which("etcd"):
        raise lc.LabError("etcd is not installed (Debian etcd-server; `lab up` or "
                          "`lab controllers up` installs it)")
    ctl.etcd_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ctl.etcd_dir, 0o700)
    argv = etcd_argv(ctl, members)
    ctl.etcd_log.parent.mkdir(parents=True, exist_ok=True)
    lc.daemon_record_path(ctl.etcd_daemon).parent.mkdir(parents=True, exist_ok=True)

    def enter():
        net.join_cgroup(ctl.cgroup)
        net.setns_net(ctl.netns)

    with open(ctl.etcd_log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} lab: {' '.join(argv)}\n".encode())
        out.flush()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=etcd_env(), preexec_fn=enter, start_new_session=True)
    p.returncode = 0  # it outlives this command
    rec = dict(lc.pid_record(p.pid, ctl.etcd_daemon), argv=argv, log=str(ctl.etcd_log))
    lc.write_json(lc.daemon_record_path(ctl.etcd_daemon), rec)
    lc.made_add("proc", name=ctl.etcd_daemon, pid=p.pid, starttime=rec["starttime"])
    return rec


def etcdctl(endpoints, *args, timeout=10):
    argv = ["etcdctl", "--endpoints", ",".join(endpoints), "--dial-timeout", "1s",
            "--command-timeout", "2s", *args]
    return lc.run(argv, check=False, timeout=timeout, env=etcd_env())


def member_health(ctl):
    """(healthy, detail) of one member, asked at its own client URL from the host."""
    try:
        p = etcdctl([ctl.etcd_client_url], "endpoint", "health", "-w", "json")
    except lc.LabError as e:
        return False, str(e)
    try:
        doc = json.loads(p.stdout or "[]")
        ok = bool(doc) and all(d.get("health") for d in doc)
        detail = "; ".join(str(d.get("error") or "healthy") for d in doc) or \
            (p.stderr or "").strip()
    except ValueError:
        ok, detail = False, (p.stderr or p.stdout or "").strip()
    return ok, detail


def wait_healthy(ctls, deadline_s=HEALTH_DEADLINE_S, progress=None):
    """Until every member in ctls is healthy; progress(msg) every few seconds.
    Fails naming the member(s) and their log, at once if one exits."""
    end = time.monotonic() + deadline_s
    last_report = time.monotonic()
    t0 = time.monotonic()
    while True:
        dead = [c for c in ctls if not etcd_record(c)]
        if dead:
            c = dead[0]
            raise lc.LabError(f"etcd member {c.name} exited ({c.etcd_log}):\n" + lc.tail(c.etcd_log))
        with cf.ThreadPoolExecutor(max(1, len(ctls))) as ex:
            health = dict(zip([c.name for c in ctls], ex.map(member_health, ctls)))
        bad = [c for c in ctls if not health[c.name][0]]
        if not bad:
            return time.monotonic() - t0
        if time.monotonic() > end:
            raise lc.LabError(
                f"etcd member(s) not healthy after {deadline_s:.0f}s: "
                + "; ".join(f"{c.name} ({health[c.name][1]}; log {c.etcd_log})" for c in bad)
                + f"\n{bad[0].etcd_log}:\n" + lc.tail(bad[0].etcd_log))
        if progress and time.monotonic() - last_report >= 3:
            last_report = time.monotonic()
            progress("waiting for etcd: " + ", ".join(
                f"{c.name} {'healthy' if health[c.name][0] else 'not yet'}" for c in ctls))
        time.sleep(0.3)


def stop_etcd(ctl):
    return lc.stop_daemon(ctl.etcd_daemon)


# --- up / down ---------------------------------------------------------------------

def known():
    """Every controller this lab has anything of (also after a crash)."""
    names = set()
    base = lc.STATE / "controllers"
    if base.exists():
        names |= {p.name for p in base.iterdir() if p.is_dir()}
    for e in lc.made_list("netns"):
        if e.get("name", "").startswith("vlab-ctl"):
            names.add(e["name"][len("vlab-"):])
    for e in lc.made_list("proc"):
        if lc.is_controller_name(e.get("name", "").removesuffix("-etcd")):
            names.add(e["name"].removesuffix("-etcd"))
    out = []
    for n in sorted(names, key=lambda s: (len(s), s)):
        with contextlib.suppress(lc.LabError):
            out.append(lc.Controller(n))
    return out


def up(count, progress):
    """Converge to `count` controllers, each up, not partitioned, its etcd
    member running and healthy. Returns (what it did, seconds waited)."""
    if not 1 <= count <= lc.MAX_CONTROLLERS:
        raise lc.LabError(f"--count {count}: between 1 and {lc.MAX_CONTROLLERS}")
    have = lc.controllers_wanted()
    if have and len(have) != count:
        raise lc.LabError(f"the lab has {len(have)} controllers, not {count}: "
                          "`lab controllers down` first")
    members = [lc.Controller(lc.controller_name(i)) for i in range(1, count + 1)]
    lc.write_json(lc.CONTROLLERS_JSON, {"count": count, "created_at": (
        lc.read_json(lc.CONTROLLERS_JSON, {}) or {}).get("created_at") or time.time()})
    done = []
    for ctl in members:
        done += create(ctl)
    for ctl in members:
        done += heal(ctl, members, wait=False)
    started = []
    for ctl in members:
        rec = start_etcd(ctl, members)
        if rec:
            started.append(ctl.name)
            done.append(f"{ctl.name}: etcd member started (pid {rec['pid']}, log {ctl.etcd_log})")
    took = wait_healthy(members, progress=progress)
    done.append(f"etcd: {count} member(s) healthy ({took:.1f}s)")
    return done


def down():
    done = []
    for ctl in known():
        done += destroy(ctl)
    with contextlib.suppress(OSError):
        lc.CONTROLLERS_JSON.unlink()
    with contextlib.suppress(OSError):
        (lc.STATE / "controllers").rmdir()
    return done


# --- faults --------------------------------------------------------------------------

def _partitioned(ctl):
    return _netns_exists(ctl.netns) and lc.run(
        ["ip", "netns", "exec", ctl.netns, "nft", "list", "table", "inet", PARTITION_TABLE],
        check=False).returncode == 0


def is_on(ctl):
    return _netns_exists(ctl.netns) and not ctl.fault_flag("power-off").exists()


def run_fault(kind, ctl):
    if kind not in KINDS:
        raise lc.LabError(f"{kind} is not a controller fault; on a controller: {', '.join(KINDS)}")
    members = lc.controllers_wanted()
    if ctl.name not in [m.name for m in members] or not _netns_exists(ctl.netns):
        raise lc.LabError(f"{ctl.name} is not a controller of this lab (`lab controllers up` "
                          f"made {[m.name for m in members]})")
    if kind == "power-off":
        return power_off(ctl)
    if kind == "power-on":
        return power_on(ctl, members)
    if kind == "partition":
        return partition(ctl)
    if kind == "unpartition":
        return unpartition(ctl)
    if kind == "etcd-stop":
        if not etcd_record(ctl):
            ctl.fault_flag("etcd-stopped").touch()
            return [f"{ctl.name}: etcd was not running"]
        ctl.fault_flag("etcd-stopped").touch()
        stop_etcd(ctl)
        return [f"{ctl.name}: etcd member stopped (SIGTERM); the rest of the controller runs on"]
    if kind == "etcd-start":
        return etcd_start(ctl, members)
    return heal(ctl, members)


def power_off(ctl):
    ctl.faults.mkdir(parents=True, exist_ok=True)
    already = ctl.fault_flag("power-off").exists() and not lc.cgroup_pids(ctl.cgroup)
    ctl.fault_flag("power-off").touch()
    t0 = time.monotonic()
    killed = net.kill_cgroup(ctl.cgroup) if ctl.cgroup.exists() else 0
    link(ctl, up=False)
    if already:
        return [f"{ctl.name} is already off"]
    return [f"{ctl.name}: power lost: cgroup.kill on {ctl.cgroup} ({killed} processes: etcd "
            f"and whatever ran there), mgmt0 down ({time.monotonic() - t0:.2f}s)"]


def power_on(ctl, members, wait=True):
    if is_on(ctl) and etcd_record(ctl):
        return [f"{ctl.name} is already on (etcd pid {etcd_record(ctl)['pid']})"]
    ctl.fault_flag("power-off").unlink(missing_ok=True)
    t0 = time.monotonic()
    link(ctl, up=True)
    out = [f"{ctl.name}: powered on: mgmt0 up"]
    if ctl.fault_flag("etcd-stopped").exists():
        return out + [f"{ctl.name}: etcd stays stopped (etcd-stop in force; `etcd-start`)"]
    rec = start_etcd(ctl, members)
    if rec and wait:
        wait_healthy([ctl])
    if rec:
        out.append(f"{ctl.name}: etcd member restarted on its data (pid {rec['pid']})"
                   + (f", healthy ({time.monotonic() - t0:.2f}s)" if wait else ""))
    return out


def etcd_start(ctl, members, wait=True):
    ctl.fault_flag("etcd-stopped").unlink(missing_ok=True)
    if not is_on(ctl):
        return [f"{ctl.name} is off: etcd starts at power-on"]
    t0 = time.monotonic()
    rec = start_etcd(ctl, members)
    if not rec:
        return [f"{ctl.name}: etcd already runs (pid {etcd_record(ctl)['pid']})"]
    if wait:
        wait_healthy([ctl])
    return [f"{ctl.name}: etcd member started (pid {rec['pid']})"
            + (f", healthy ({time.monotonic() - t0:.2f}s)" if wait else "")]


def partition(ctl):
    if _partitioned(ctl):
        return [f"{ctl.name} is already partitioned from the other controllers"]
    # Inside the controller's netns (it goes with the netns): mgmt0 <-> every
    # controller address dropped both ways. Its own address never crosses
    # mgmt0 (lo), so only the others are cut; 198.51.100.1 (Nova, BMCs) and
    # the computes (198.51.100.1x) stay reachable.
    rules = (f"table inet {PARTITION_TABLE} {{\n"
             "  chain input { type filter hook input priority -10; policy accept;\n"
             f'    iifname "mgmt0" ip saddr {lc.CONTROLLER_RANGE} counter drop\n  }}\n'
             "  chain output { type filter hook output priority -10; policy accept;\n"
             f'    oifname "mgmt0" ip daddr {lc.CONTROLLER_RANGE} counter drop\n  }}\n'
             "}\n")
    lc.run(["ip", "netns", "exec", ctl.netns, "nft", "-f", "-"], input=rules)
    ctl.faults.mkdir(parents=True, exist_ok=True)
    lc.write_json(ctl.fault_flag("partitioned"), {"since": time.time()})
    return [f"{ctl.name}: partitioned: mgmt0 <-> {lc.CONTROLLER_RANGE} (the other controllers) "
            f"dropped both ways (nft table {PARTITION_TABLE} in {ctl.netns}); "
            f"{lc.HOST_MGMT_IP}, the computes and the BMCs still reachable"]


def unpartition(ctl):
    ctl.fault_flag("partitioned").unlink(missing_ok=True)
    if not _partitioned(ctl):
        return [f"{ctl.name} was not partitioned"]
    lc.run(["ip", "netns", "exec", ctl.netns, "nft", "delete", "table", "inet", PARTITION_TABLE])
    return [f"{ctl.name}: the other controllers reachable again (nft table {PARTITION_TABLE} "
            "removed)"]


def heal(ctl, members, wait=True):
    """Undo every fault on the controller: not partitioned, powered on, etcd
    running (and healthy, with wait)."""
    out = []
    if _partitioned(ctl) or ctl.fault_flag("partitioned").exists():
        out += unpartition(ctl)
    if ctl.fault_flag("etcd-stopped").exists():
        ctl.fault_flag("etcd-stopped").unlink()
        out.append(f"{ctl.name}: etcd-stop lifted")
    if not is_on(ctl):
        out += power_on(ctl, members, wait=wait)
    elif not etcd_record(ctl):
        out += etcd_start(ctl, members, wait=wait)
    if wait and not out:
        out.append(f"{ctl.name}: nothing to heal")
    return out


def active(ctl):
    found = []
    if ctl.fault_flag("power-off").exists():
        found.append("power-off")
    if ctl.fault_flag("partitioned").exists():
        found.append("partitioned")
    if ctl.fault_flag("etcd-stopped").exists():
        found.append("etcd-stopped")
    return found


# --- exec / info / status ---------------------------------------------------------------

def exec_in(ctl, argv):
    """Become argv inside the controller: its cgroup, then its netns through
    `ip netns exec` (which execs: the pid stays the caller's). Never returns."""
    if not argv:
        raise lc.LabError("nothing to run: `lab controller exec ctlN -- CMD ARGS...`")
    if not _netns_exists(ctl.netns) or not ctl.cgroup.exists():
        raise lc.LabError(f"{ctl.name} does not exist (`lab controllers up`)")
    if not is_on(ctl):
        raise lc.LabError(f"{ctl.name} is powered off (`lab fault power-on {ctl.name}`)")
    net.join_cgroup(ctl.cgroup)
    # Only stdin/stdout/stderr go along (not, e.g., a caller's `flock` fd).
    os.closerange(3, 65536)
    os.execvp("ip", ["ip", "netns", "exec", ctl.netns, *argv])


def info(ctl):
    return {"name": ctl.name, "index": ctl.index, "netns": ctl.netns, "ip": ctl.ip,
            "host_if": ctl.host_if, "etcd_client_url": ctl.etcd_client_url,
            "etcd_peer_url": ctl.etcd_peer_url, "decider_url": ctl.decider_url,
            "cgroup": ctl.cgroup_rel, "cgroup_path": str(ctl.cgroup),
            "etcd_data_dir": str(ctl.etcd_dir), "etcd_log": str(ctl.etcd_log)}


def status(ctl, health=None):
    rec = etcd_record(ctl)
    if health is None:
        health = member_health(ctl) if rec else (False, "not running")
    return dict(info(ctl), power="on" if is_on(ctl) else "off",
                processes=len(lc.cgroup_pids(ctl.cgroup)),
                faults=active(ctl),
                etcd={"pid": rec["pid"] if rec else None,
                      "state": ("healthy" if health[0] else "unhealthy") if rec else "stopped",
                      "detail": health[1]})


def statuses():
    ctls = lc.controllers_wanted() or known()
    with cf.ThreadPoolExecutor(max(1, len(ctls))) as ex:
        return list(ex.map(status, ctls))

