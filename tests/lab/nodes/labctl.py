"""`tests/lab/lab`: the lab's one entry point (see tests/lab/README.md).

  up [--nodes N] [--sensors] [--report-interval S]   build and start everything
  down                      stop and remove everything (venv/ and cache/ kept)
  purge                     down, then remove $VIGIL_LAB_DIR entirely
  status [--json] [--show-secrets]
  fault KIND NODE [--json]  power-off power-on kill-nova-compute hang-nova-compute
                            unhang-nova-compute mgmt-link-down mgmt-link-up
                            kill-sensor isolate unisolate hard-hang bmc-lies bmc-truth heal
  fault kdump NODE [--dump-secs N] [--to ADDR[:PORT]]... [--json]   kernel panic with
                            kdump: the node frozen, links up, fence_kdump_send in its
                            netns to each ADDR (default 198.51.100.1:7410) every 1 s for
                            N s (default 10)
  fault kdump-send NODE [--dump-secs N] [--to ADDR[:PORT]]... [--json]   the same
                            messages from a node that keeps running (forged)
  fault freeze SERVICE --seconds N [--json]   SIGSTOP a control-plane service's whole
                            process tree (nova-api, nova-conductor, nova-scheduler,
                            placement, keystone); a detached helper SIGCONTs it after N s
  fault thaw SERVICE [--json]                 SIGCONT it now (SERVICE may also be mariadb)
  fault api-500 nova-api --seconds N [--json] nova-api answers 500 for N s: reads refused,
                            writes applied then answered 500 (first use restarts nova-api)
  fault api-ok nova-api [--json]              end it now
  boot N NODE [--json] [cloud boot options]         (delegates to `cloud boot`)
  servers [--json]                                  (delegates to `cloud servers`)
  delete-servers (--all | ID...)                    delete servers, wait until gone
                                                    (delegates to `cloud delete-servers`)
  pid NAME                  the pid of a lab process if it runs (exit 1 if not):
                            a control-plane service (nova-api, keystone, ...), a
                            daemon (receivers, computeN-ipmi, redfish-bmcs, ctlN-etcd) or
                            NODE/PROC (compute1/nova-compute, compute1/sensor,
                            compute1/supervisor); run/*.pid hold "PID STARTTIME",
                            so `kill $(cat run/x.pid)` would misfire: use this
  sensor start|stop NODE
  wait-compute NODE... [--timeout S]                (delegates to `cloud wait-compute`)
  reset-services            re-enable + un-force every nova-compute (`cloud reset-services`);
                            a host Nova refuses for `done` evacuations gets its
                            nova-compute restarted first (Nova's remedy)
  token                     print an admin Keystone token (`cloud token`)
  net up|down               only the host bridges (tests/lab/nodes/net does the same)
  info                      print state/lab.json
  controllers up [--count N] [--json]   N (default 3) controllers ctl1..ctlN: netns
                            vlab-ctlN at 198.51.100.(200+N), cgroup vigil-lab/ctlN, an etcd
                            member each (one cluster); sensors also stream to each
                            controller's decider URL (CONTRACT.md "Controllers")
  controllers down [--json] all of it stopped and removed; sensors back to one decider
  controller exec ctlN -- CMD ARGS...   run CMD in that controller (netns + cgroup); execs,
                            so CMD keeps this pid; stdin/stdout/stderr pass through
  fault KIND ctlN [--json]  power-off power-on partition unpartition etcd-stop etcd-start heal
  fail-spawn UUID [COUNT] [--as spawn|claim] [--json]   the next COUNT (default 1;
                            0 clears) spawns of that server fail in the lab virt driver,
                            on any node: its next evacuation fails on the destination,
                            the server ERROR (spawn) or rolled back as it was (claim)
                            (README "Failures")
"""

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import apifault
import bmc
import controllers
import faults
import stall
import labcommon as lc
import net
import power

T0 = time.monotonic()


def step(msg):
    lc.log(f"{time.strftime('%H:%M:%S')} lab: {msg} (+{time.monotonic() - T0:.1f}s)")


def need_root():
    if os.geteuid() != 0:
        raise lc.LabError("the lab needs root (network namespaces, cgroups, loop devices); "
                          "run it with sudo")


def cloud(*args, env=None, capture=False, timeout=1800):
    """Run tests/lab/cloud/cloud; its output goes to our stderr unless captured."""
    if not lc.CLOUD.exists():
        raise lc.LabError(f"{lc.CLOUD} does not exist (the control plane half of the lab)")
    full_env = dict(os.environ, VIGIL_LAB_DIR=str(lc.LAB_DIR), **(env or {}))
    p = subprocess.run([str(lc.CLOUD), *args], env=full_env, text=True, timeout=timeout,
                       stdout=subprocess.PIPE if capture else sys.stderr,
                       stderr=subprocess.PIPE if capture else sys.stderr)
    if p.returncode != 0:
        detail = (p.stderr or "").strip() if capture else "see the output above"
        raise lc.LabError(f"`cloud {' '.join(args)}` failed (rc {p.returncode}): {detail}")
    return p.stdout


def cloud_json(*args):
    return json.loads(cloud(*args, "--json", capture=True, timeout=120))


def nodes_of(cfg):
    return [lc.Node(lc.node_name(i)) for i in range(1, int(cfg.get("nodes", 0)) + 1)]


def known_nodes():
    """Every node this lab has state for (also after a failed `up`)."""
    names = set()
    base = lc.STATE / "nodes"
    if base.exists():
        names |= {p.name for p in base.iterdir() if p.is_dir()}
    for e in lc.made_list("netns"):
        if e.get("name", "").startswith("vlab-compute"):
            names.add(e["name"][len("vlab-"):])
    out = []
    for n in sorted(names, key=lambda s: (len(s), s)):
        with contextlib.suppress(lc.LabError):
            out.append(lc.Node(n))
    return out


# --- packages --------------------------------------------------------------

# Debian packages the node half needs (the cloud installs its own).
APT = {"ipmi_sim": "openipmi", "ipmitool": "ipmitool", "nft": "nftables", "losetup": "mount",
       "ip": "iproute2", "ping": "iputils-ping",
       # `lab controllers up`: one etcd member per controller.
       "etcd": "etcd-server", "etcdctl": "etcd-client"}


def ensure_packages():
    missing = sorted({pkg for cmd, pkg in APT.items() if not shutil.which(cmd)})
    # fusepy loads libfuse 2 through ctypes.
    if not any(Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/libfuse.so.2",
                                          "/lib/x86_64-linux-gnu/libfuse.so.2",
                                          "/usr/lib/aarch64-linux-gnu/libfuse.so.2")):
        missing.append("libfuse2")
    if not missing:
        return
    step(f"apt: installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lc.run(["apt-get", "update", "-q"], timeout=600, env=env)
    lc.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
           timeout=900, env=env)


def check_tools_venv():
    py = lc.tools_python()
    probe = "import sushy_tools, aiosmtpd, fuse, bcrypt"
    p = subprocess.run([py, "-c", probe], capture_output=True, text=True)
    if p.returncode != 0:
        raise lc.LabError(f"{py} lacks sushy-tools/aiosmtpd/fusepy (`{probe}`: "
                          f"{p.stderr.strip().splitlines()[-1:]}); `cloud install` installs them")


def install_hang_hook():
    """One .pth file in the lab venv's site-packages that imports
    hang_hook/vigil_lab_hang_hook.py in processes the node supervisor starts
    (VIGIL_LAB_HANG_DIR set); a no-op everywhere else. Idempotent."""
    py = lc.tools_python()
    p = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        raise lc.LabError(f"cannot find the site-packages of {py}: {p.stderr.strip()}")
    pth = Path(p.stdout.strip()) / "vigil_lab_hang_hook.pth"
    line = ('import os; os.environ.get("VIGIL_LAB_HANG_DIR") and '
            '__import__("vigil_lab_hang_hook")\n')
    if lc.read_text(pth) != line.strip():
        lc.write_atomic(pth, line)


# --- receivers ---------------------------------------------------------------

def start_receivers():
    if lc.daemon_alive("receivers"):
        return False
    lc.RECEIVERS_DIR.mkdir(parents=True, exist_ok=True)
    for f in ("smtp.jsonl", "webhook.jsonl"):
        (lc.RECEIVERS_DIR / f).touch()
    log = lc.LOGS / "receivers.log"
    lc.spawn_daemon("receivers", [lc.tools_python(), str(lc.NODES_DIR / "receivers.py"),
                                  str(lc.RECEIVERS_DIR)], log)
    url = f"http://{lc.HOST_MGMT_IP}:{lc.WEBHOOK_PORT}/healthz"

    def ready():
        if not lc.daemon_alive("receivers"):
            raise lc.LabError(f"receivers exited; {log}:\n" + lc.tail(log))
        import socket
        import urllib.request
        try:
            with urllib.request.urlopen(url, timeout=2):
                pass
            with socket.create_connection((lc.HOST_MGMT_IP, lc.SMTP_PORT), timeout=2) as s:
                return s.recv(100).startswith(b"220")
        except OSError:
            return False
    lc.wait_for(f"receivers (SMTP {lc.HOST_MGMT_IP}:{lc.SMTP_PORT}, webhook {url}; log {log})",
                20, ready, 0.2)
    return True


# --- lab.json ----------------------------------------------------------------

def lab_info(cfg, up_seconds=None):
    cloud_info = lc.read_json(lc.STATE / "cloud.json", {}) or {}
    nodes = []
    for node in nodes_of(cfg):
        nodes.append({
            "name": node.name, "index": node.index, "netns": node.netns,
            "mgmt_ip": node.mgmt_ip, "inst_ip": node.inst_ip,
            "cgroup": node.cgroup_rel, "cgroup_path": str(node.cgroup),
            "boot_id_path": str(node.boot_id_path),
            "system_uuid": node.system_uuid,
            "product_uuid_path": str(node.product_uuid_path),
            "sensor_token_path": str(node.token_path),
            "sensor": node.sensor_flag.exists(),
            "logs": str(node.logs),
            "nova_compute_log": str(lc.LOGS / f"nova-compute-{node.name}.log"),
            "redfish": {"url": bmc.redfish_url(node), "system_id": node.name,
                        "system_path": f"/redfish/v1/Systems/{node.name}"},
            "ipmi": {"host": lc.HOST_MGMT_IP, "port": node.ipmi_port, "interface": "lanplus",
                     "cipher_suite": 3},
        })
    return {
        "version": 1,
        "lab_dir": str(lc.LAB_DIR),
        "written_at": time.time(),
        "up_seconds": up_seconds,
        "config": cfg,
        "cloud": cloud_info.get("cloud", "vigil-lab"),
        "clouds_yaml": cloud_info.get("clouds_yaml", str(lc.STATE / "clouds.yaml")),
        "openrc": cloud_info.get("openrc", str(lc.STATE / "openrc")),
        "controller": {"mgmt_ip": lc.HOST_MGMT_IP, "inst_ip": lc.HOST_INST_IP,
                       "mgmt_bridge": lc.MGMT_BRIDGE, "inst_bridge": lc.INST_BRIDGE,
                       "endpoints": {k: v for k, v in cloud_info.items()
                                     if k in ("keystone", "nova", "placement", "glance",
                                              "neutron_standin", "rabbitmq")},
                       "image_id": cloud_info.get("image_id"),
                       "flavor_id": cloud_info.get("flavor_id"),
                       "network_name": cloud_info.get("network_name"),
                       "report_interval": cloud_info.get("report_interval"),
                       "service_down_time": cloud_info.get("service_down_time")},
        "decider": {"listen": f"{lc.HOST_MGMT_IP}:50051", "url": lc.DECIDER_URL},
        # The password itself stays in its file (mode 0600): lab.json is read
        # and printed by tools; only `status --show-secrets` prints it.
        "bmc": {"username": "admin", "password_file": str(lc.BMC_PASSWORD)},
        "receivers": {
            "smtp": {"host": lc.HOST_MGMT_IP, "port": lc.SMTP_PORT,
                     "log": str(lc.RECEIVERS_DIR / "smtp.jsonl")},
            "webhook": {"url": f"http://{lc.HOST_MGMT_IP}:{lc.WEBHOOK_PORT}/",
                        "log": str(lc.RECEIVERS_DIR / "webhook.jsonl")},
        },
        "nodes": nodes,
        # `lab controllers up` (CONTRACT.md "Controllers"); empty without.
        "controllers": [controllers.info(c) for c in lc.controllers_wanted()],
        "etcd_endpoints": [c.etcd_client_url for c in lc.controllers_wanted()],
        "sensor_deciders": lc.sensor_decider_urls(),
        "logs": str(lc.LOGS),
    }


# --- up ------------------------------------------------------------------------

def is_up(cfg):
    """What is not running, for the quick check of an `up` on a running lab."""
    problems = []
    if not lc.LAB_JSON.exists():
        return ["no lab.json"]
    try:
        st = {"running": True} if lc.NO_CLOUD else cloud_json("status")
    except (lc.LabError, ValueError) as e:
        return [f"cloud status: {e}"]
    if not st.get("running"):
        problems.append("control plane: " + ", ".join(
            s["name"] for s in st.get("services", []) if not s.get("running")))
    svcs = {s["host"]: s for s in st.get("nova_services") or [] if s["binary"] == "nova-compute"}
    for node in nodes_of(cfg):
        if not power.is_on(node):
            problems.append(f"{node.name} is off")
        elif not faults._proc(node, "nova-compute"):
            problems.append(f"{node.name}: nova-compute not running")
        elif not lc.NO_CLOUD and (svcs.get(node.name) or {}).get("state") != "up" \
                and not (svcs.get(node.name) or {}).get("forced_down"):
            # (forced down is an operator's decision about a healthy lab)
            problems.append(f"{node.name}: nova-compute not up in Nova")
        if faults.active(node):
            problems.append(f"{node.name}: faults in force: {', '.join(faults.active(node))}")
        elif power.is_on(node) and node.sensor_flag.exists() \
                and not faults._proc(node, "sensor"):
            problems.append(f"{node.name}: its sensor is wanted but not running")
        if not lc.daemon_alive(f"{node.name}-ipmi"):
            problems.append(f"IPMI BMC of {node.name} not running")
        problems += bmc.identity_problems(node)
    if not lc.daemon_alive(bmc.REDFISH_DAEMON):
        problems.append("Redfish BMCs not running")
    if not lc.daemon_alive("receivers"):
        problems.append("receivers not running")
    return problems


def sensor_binary(cfg):
    """The sensor executable: the packaged one when the lab runs the package
    (cfg sensor_pkg), else VIGIL_SENSOR_BIN, else what the lab was configured
    with, else the workspace's own build (debug first: what `cargo
    build`/tests make)."""
    pkg = cfg.get("sensor_pkg")
    if pkg and not os.environ.get("VIGIL_SENSOR_BIN"):
        return str(Path(pkg["root"]) / "usr/bin/vigil-sensor")
    given = os.environ.get("VIGIL_SENSOR_BIN")
    if given:
        return str(Path(given).resolve())
    configured = cfg.get("sensor_bin")
    if configured and Path(configured).exists():
        return configured
    if configured:
        # A checkout that was moved or deleted (a CI clone): this one's own
        # build serves, rather than every sensor failing to start.
        step(f"the lab's sensor binary {configured} is gone; using this checkout's build")
    for prof in ("debug", "release"):
        cand = lc.REPO / "target" / prof / "vigil-sensor"
        if cand.exists():
            return str(cand)
    return None


PKG_DIR = lc.LAB_DIR / "pkg"
MAX_DEB_BYTES = 1 << 30


def packaged_deb():
    """VIGIL_PACKAGED=DIR: the newest vigil-sensor_*.deb in DIR (what
    `cargo xtask package` made), or None when the variable is unset."""
    given = os.environ.get("VIGIL_PACKAGED")
    if not given:
        return None
    if os.environ.get("VIGIL_SENSOR_BIN"):
        raise lc.LabError("both VIGIL_PACKAGED and VIGIL_SENSOR_BIN are set: the lab runs "
                          "either the package or a binary; unset one")
    debs = sorted(Path(given).glob("vigil-sensor_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise lc.LabError(f"VIGIL_PACKAGED={given}: no vigil-sensor_*.deb there "
                          "(`cargo xtask package --dev` makes it)")
    return debs[-1].resolve()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack_sensor_deb(deb):
    """Extracts the package into $VIGIL_LAB_DIR/pkg/vigil-sensor (dpkg-deb -x,
    as dpkg would lay out its files), unless that root already holds this
    very .deb. Returns the cfg record {deb, sha256, root}."""
    if deb.stat().st_size > MAX_DEB_BYTES:
        raise lc.LabError(f"{deb} is over {MAX_DEB_BYTES} bytes; not a vigil-sensor package")
    sha = sha256_of(deb)
    root = PKG_DIR / "vigil-sensor"
    stamp = root / ".lab-package.json"
    rec = {"deb": str(deb), "sha256": sha, "root": str(root)}
    if (lc.read_json(stamp) or {}).get("sha256") == sha:
        return rec
    new, old = PKG_DIR / ".vigil-sensor.new", PKG_DIR / ".vigil-sensor.old"
    for d in (new, old):
        shutil.rmtree(d, ignore_errors=True)
    new.mkdir(parents=True)
    lc.run(["dpkg-deb", "-x", str(deb), str(new)], timeout=120)
    unit = new / "usr/lib/systemd/system/vigil-sensor.service"
    if not (new / "usr/bin/vigil-sensor").exists() or not unit.exists():
        raise lc.LabError(f"{deb} holds no usr/bin/vigil-sensor and {unit.name}: "
                          "not the vigil-sensor package")
    lc.write_json(new / ".lab-package.json", rec)
    if root.exists():
        root.rename(old)
    new.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    step(f"unpacked {deb.name} into {root}")
    return rec


def converge_sensor_source(cfg):
    """Makes the lab config name what the caller's environment asks the
    sensors to run (VIGIL_PACKAGED: the package; VIGIL_SENSOR_BIN: that
    binary; neither: as configured) and restarts the running sensors when
    that changed. Prints which one runs. Returns the config."""
    deb = packaged_deb()
    given = os.environ.get("VIGIL_SENSOR_BIN")
    before = (cfg.get("sensor_pkg") or {}).get("sha256"), cfg.get("sensor_bin")
    running = [node for node in nodes_of(cfg) if faults._proc(node, "sensor")] \
        if cfg.get("nodes") else []
    if deb is not None:
        if (cfg.get("sensor_pkg") or {}).get("sha256") == sha256_of(deb):
            return cfg
        for node in running:
            power.request(node, "stop sensor")
        for node in running:
            power.wait_proc(node, "sensor", running=False, deadline_s=20)
        pkg = unpack_sensor_deb(deb)
        cfg = dict(cfg, sensor_pkg=pkg, sensor_bin=str(Path(pkg["root"]) / "usr/bin/vigil-sensor"))
    elif given:
        if not cfg.get("sensor_pkg") and cfg.get("sensor_bin") == str(Path(given).resolve()):
            return cfg
        for node in running:
            power.request(node, "stop sensor")
        for node in running:
            power.wait_proc(node, "sensor", running=False, deadline_s=20)
        cfg = {k: v for k, v in cfg.items() if k != "sensor_pkg"}
        cfg["sensor_bin"] = str(Path(given).resolve())
    else:
        return cfg
    lc.write_json(lc.CONFIG_JSON, cfg)
    step("sensors now run " + sensor_source(cfg)
         + (f" (was {before[1]})" if before[1] else ""))
    for node in running:
        with contextlib.redirect_stdout(sys.stderr):
            start_sensor(node)
    refresh_lab_json()
    return cfg


def sensor_source(cfg):
    """One line: what the lab's sensors run."""
    pkg = cfg.get("sensor_pkg")
    if pkg:
        return (f"the package {pkg['deb']} (sha256 {pkg['sha256'][:12]}), unpacked in "
                f"{pkg['root']}, with its unit's ExecStart")
    return f"the binary {cfg.get('sensor_bin')} (build tree; VIGIL_PACKAGED unset)"


def cmd_up(args):
    need_root()
    n = args.nodes
    if not 1 <= n <= lc.MAX_NODES:
        raise lc.LabError(f"--nodes {n}: between 1 and {lc.MAX_NODES}")
    cfg = lc.lab_config()
    if cfg and lc.LAB_JSON.exists():
        if cfg.get("nodes") != n and args.nodes_given:
            raise lc.LabError(f"the lab is up with {cfg.get('nodes')} nodes, not {n}: "
                              "`lab down` first")
        problems = is_up(cfg)
        if not problems:
            # Converge to what was asked: the package named by VIGIL_PACKAGED
            # or the binary named by VIGIL_SENSOR_BIN replaces the sensor
            # running (several checkouts share one lab: each tests its own
            # sensor), and `up --sensors` on a lab up without them starts
            # them (kept across power cycles).
            cfg = converge_sensor_source(cfg)
            want = [node for node in nodes_of(cfg)
                    if args.sensors and not faults._proc(node, "sensor")]
            for node in want:
                start_sensor(node)
            if args.sensors and not cfg.get("sensors"):
                cfg = dict(lc.lab_config(), sensors=True)
                lc.write_json(lc.CONFIG_JSON, cfg)
                refresh_lab_json()
            print(f"lab already up ({cfg.get('nodes')} nodes"
                  + (f"; sensors started on {', '.join(n.name for n in want)}" if want else "")
                  + f"; checked in {time.monotonic() - T0:.1f}s); `lab status` shows it")
            return
        step("lab partly up; repairing: " + "; ".join(problems))
        n = cfg.get("nodes", n)
    deb = packaged_deb()
    if deb is not None:
        sensor_pkg = unpack_sensor_deb(deb)
    elif os.environ.get("VIGIL_SENSOR_BIN"):
        sensor_pkg = None
    else:
        sensor_pkg = cfg.get("sensor_pkg")
    sensor_bin = sensor_binary({"sensor_pkg": sensor_pkg} if sensor_pkg else cfg)
    report_interval = args.report_interval or cfg.get("report_interval") or 10
    cfg = {"nodes": n, "sensors": bool(args.sensors or cfg.get("sensors")),
           "report_interval": report_interval, "sensor_bin": sensor_bin,
           "created_at": cfg.get("created_at") or time.time()}
    if sensor_pkg:
        cfg["sensor_pkg"] = sensor_pkg
    step("sensors run " + sensor_source(cfg))
    for d in (lc.STATE, lc.LOGS, lc.NODES_RUN, lc.ETC):
        d.mkdir(parents=True, exist_ok=True)
    lc.write_json(lc.CONFIG_JSON, cfg)
    timings = {}

    t = time.monotonic()
    ensure_packages()
    if not lc.NO_CLOUD:
        step("cloud install")
        cloud("install")
    check_tools_venv()
    install_hang_hook()
    timings["install"] = time.monotonic() - t

    t = time.monotonic()
    for line in net.net_up():
        step(f"net: {line}")
    cloud_env = {"VIGIL_LAB_REPORT_INTERVAL": str(report_interval)}
    step("cloud start (in the background while nodes and BMCs are built)")
    cloud_start = subprocess.Popen(
        ["true"] if lc.NO_CLOUD else [str(lc.CLOUD), "start"], stdout=sys.stderr,
        stderr=sys.stderr, env=dict(os.environ, VIGIL_LAB_DIR=str(lc.LAB_DIR), **cloud_env))
    try:
        nodes = nodes_of(cfg)
        bmc.password()
        for node in nodes:
            net.node_create(node)
            if cfg["sensors"]:
                node.sensor_flag.touch()
        stale_redfish = False
        for node in nodes:
            # BMCs started by an older lab serve another system UUID than
            # the node's: start them anew (an IPMI BMC's restart power-cycles
            # its node, below; the Redfish one has no power of its own).
            wrong = bmc.identity_problems(node)
            if any("IPMI" in p for p in wrong):
                step(f"{node.name}: its IPMI BMC does not serve its system UUID; restarting it")
                bmc.stop_ipmi(node)
            stale_redfish = stale_redfish or any("Redfish" in p for p in wrong)
        if stale_redfish:
            step("the Redfish BMCs do not serve the nodes' system UUIDs; restarting them")
            lc.stop_daemon(bmc.REDFISH_DAEMON)
        for node in nodes:
            if not lc.daemon_alive(f"{node.name}-ipmi") and power.is_on(node):
                # A new ipmi_sim starts with power off and does not know the
                # running supervisor; so that the BMC tells the truth, the
                # node loses power and is powered on through the new BMC below.
                step(f"{node.name} runs without its IPMI BMC: power cut, powered on again")
                power.cut(node)
        with cf.ThreadPoolExecutor(8) as ex:
            futs = [ex.submit(bmc.start_ipmi, node) for node in nodes]
            futs.append(ex.submit(bmc.start_redfish, nodes))
            futs.append(ex.submit(start_receivers))
            for f in futs:
                f.result()
        step(f"{n} nodes built (netns, cgroup, veths); BMCs and receivers up")
        rc = cloud_start.wait(timeout=900)
    except BaseException:
        if cloud_start.poll() is None:
            cloud_start.terminate()
            cloud_start.wait(timeout=30)
        raise
    if rc != 0:
        raise lc.LabError(f"`cloud start` failed (rc {rc}); see its output above and "
                          f"`cloud status`; logs in {lc.LOGS}")
    timings["control plane"] = time.monotonic() - t

    t = time.monotonic()
    since = time.time()
    for node in nodes:
        if faults.active(node):
            # Left behind by someone (e.g. a test that failed half-way):
            # an `up` lab has no faults.
            for line in faults.f_heal(node):
                step(f"heal: {line}")
    powering = [node for node in nodes if not power.is_on(node)]
    for node in powering:
        power.wait_off(node, 60)
        power.power_on_via_ipmi(node)
    for node in powering:
        boot = power.wait_on(node, None, 60)
        step(f"{node.name} powered on through IPMI, boot id {boot}")
    for node in nodes:
        if node not in powering and not faults._proc(node, "nova-compute"):
            step(f"{node.name}: nova-compute not running; starting it")
            power.request(node, "start nova-compute")
            power.wait_proc(node, "nova-compute", running=True, deadline_s=30)
    names = [node.name for node in nodes]
    for node in nodes:
        if node.sensor_flag.exists() and not faults._proc(node, "sensor"):
            start_sensor(node)
    wait_computes(nodes)
    timings["computes reporting"] = time.monotonic() - t
    total = time.monotonic() - T0
    lc.write_json(lc.LAB_JSON, lab_info(cfg, total))
    print(f"lab up in {total:.1f}s: {n} nodes ({', '.join(names)}), "
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
          + f"; computes reporting since {time.strftime('%H:%M:%S', time.localtime(since))}; "
          f"lab.json {lc.LAB_JSON}")


def _exited(node, what="nova-compute"):
    rec = (lc.read_json(node.procs_json, {}) or {}).get(what) or {}
    return "exited" in rec or "error" in rec


def wait_computes(nodes, timeout_s=240):
    """Until every node's nova-compute reports to Nova; fails at once, with
    its log, when one of them exits instead."""
    names = [n.name for n in nodes]
    if lc.NO_CLOUD:
        argv = None
    else:
        argv = [str(lc.CLOUD), "wait-compute", *names, "--timeout", str(timeout_s)]
    waiter = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, VIGIL_LAB_DIR=str(lc.LAB_DIR))) \
        if argv else None
    end = time.monotonic() + timeout_s + 30
    try:
        while True:
            dead = [n for n in nodes if _exited(n)]
            if dead:
                n = dead[0]
                raise lc.LabError(
                    f"nova-compute exited on {', '.join(d.name for d in dead)} instead of "
                    f"reporting; {n.logs / 'nova-compute.out'}:\n{lc.tail(n.logs / 'nova-compute.out')}"
                    f"\n{lc.LOGS / f'nova-compute-{n.name}.log'}:\n"
                    + lc.tail(lc.LOGS / f"nova-compute-{n.name}.log"))
            if waiter is None:
                if all(faults._proc(n, "nova-compute") for n in nodes):
                    return
            elif waiter.poll() is not None:
                out, err = waiter.communicate()
                if waiter.returncode != 0:
                    raise lc.LabError(
                        f"compute services did not report: {err.strip()}; logs: "
                        + "; ".join(f"{lc.LOGS / f'nova-compute-{n}.log'}" for n in names))
                return
            if time.monotonic() > end:
                raise lc.LabError(f"compute services did not report within {timeout_s}s "
                                  f"(logs in {lc.LOGS})")
            time.sleep(0.3)
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()


# --- down / purge ------------------------------------------------------------

def cmd_down(args, keep=("venv", "cache")):
    need_root()
    done = []
    errors = []

    def attempt(what, fn):
        t = time.monotonic()
        try:
            r = fn()
            if r:
                done.extend(r if isinstance(r, list) else [what])
        except (lc.LabError, OSError) as e:
            errors.append(f"{what}: {e}")
        if time.monotonic() - t > 1:
            step(f"down: {what} took {time.monotonic() - t:.1f}s")

    if controllers.known():
        attempt("controllers", controllers.down)
    nodes = known_nodes()
    for node in nodes:
        if node.cgroup.exists() or power.is_on(node):
            attempt(f"power off {node.name}",
                    lambda node=node: [f"{node.name} powered off "
                                       f"({power.cut(node)[0]} processes)"])
    for node in nodes:
        attempt(f"stalled disk of {node.name}", lambda node=node: faults.rig_down(node))
    # Every process the node half started (BMCs, receivers, FUSE daemons),
    # by recorded pid + start time only.
    for e in lc.made_list("proc"):
        attempt(f"stop {e.get('name')}", lambda e=e: [f"stopped {e['name']}"]
                if lc.stop_daemon(e["name"]) else [])
    if lc.CLOUD.exists() and (lc.VENV / "bin" / "python").exists() and not lc.NO_CLOUD:
        attempt("cloud stop", lambda: (cloud("stop"), ["control plane stopped"])[1])
    for node in nodes:
        attempt(f"remove {node.name}", lambda node=node: net.node_destroy(node))
    # Loop devices and mounts recorded but not tied to a known node.
    for e in lc.made_list("loop"):
        for dev in faults._loops_backing(e["file"]):
            attempt(f"loop {dev}", lambda dev=dev: (lc.run(["losetup", "-d", dev]),
                                                   [f"loop {dev}"])[1])
    for e in lc.made_list("mount"):
        if faults._mounted(e["path"]):
            attempt(f"umount {e['path']}", lambda e=e: (lc.run(["umount", "-l", e["path"]]),
                                                       [f"mount {e['path']}"])[1])
    for e in lc.made_list("netns"):
        if Path(f"/run/netns/{e['name']}").exists():
            attempt(f"netns {e['name']}", lambda e=e: (lc.run(["ip", "netns", "del", e["name"]]),
                                                      [f"netns {e['name']}"])[1])
    for e in lc.made_list("link"):
        if e["name"] not in (lc.MGMT_BRIDGE, lc.INST_BRIDGE) and \
                lc.run(["ip", "link", "show", e["name"]], check=False).returncode == 0:
            attempt(f"link {e['name']}", lambda e=e: (lc.run(["ip", "link", "del", e["name"]]),
                                                     [f"link {e['name']}"])[1])
    attempt("host network", net.net_down)
    for e in sorted(lc.made_list("cgroup"), key=lambda e: -len(e["path"])):
        p = Path(e["path"])
        if p.exists() and p != lc.CGROUP_PARENT:
            attempt(f"cgroup {p}", lambda p=p: (net.kill_cgroup(p), p.rmdir(), [f"cgroup {p}"])[2])
    attempt("cgroup parent", net.remove_cgroup_parent)
    if errors:
        # Keep the state (made.json) so a second `down` can finish the job.
        for line in done:
            print(f"removed: {line}")
        raise lc.LabError("down left things behind: " + "; ".join(errors)
                          + f"; state kept in {lc.STATE}, run `lab down` again")
    if lc.LAB_DIR.exists():
        for p in lc.LAB_DIR.iterdir():
            if p.name in keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for line in done:
        print(f"removed: {line}")
    print(f"lab down in {time.monotonic() - T0:.1f}s ({lc.LAB_DIR}: kept "
          f"{', '.join(k for k in keep if (lc.LAB_DIR / k).exists()) or 'nothing'})")


def cmd_purge(args):
    cmd_down(args, keep=())
    if lc.LAB_DIR.exists():
        shutil.rmtree(lc.LAB_DIR, ignore_errors=True)
    print(f"purged {lc.LAB_DIR}")


# --- status --------------------------------------------------------------------

def _ipmi_reading(node):
    try:
        return bmc.ipmi_status(node)
    except lc.LabError:
        return "unreachable"


def _redfish_reading(node):
    try:
        return bmc.redfish_power_state(node)
    except Exception:  # noqa: BLE001 - any failure is "unreachable" here
        return "unreachable"


def node_status(node, nova_svcs, servers):
    procs = lc.read_json(node.procs_json, {}) or {}
    pids = {}
    for what in ("nova-compute", "sensor"):
        rec = procs.get(what) or {}
        if rec.get("pid") and lc.record_alive(rec):
            pids[what] = rec["pid"]
        elif rec.get("error"):
            pids[what] = f"error: {rec['error']}"
    sup = power.supervisor(node)
    if sup:
        pids["supervisor"] = sup["pid"]
    in_cg = lc.cgroup_pids(node.cgroup)
    qemus = [p for p in in_cg if "qemu-system" in " ".join(lc.proc_cmdline(p)[:1])]
    with cf.ThreadPoolExecutor(2) as ex:
        ipmi_f = ex.submit(_ipmi_reading, node)
        rf_f = ex.submit(_redfish_reading, node)
    svc = nova_svcs.get(node.name) or {}
    return {
        "name": node.name,
        "power": "on" if sup else "off",
        "bmc": {"ipmi": ipmi_f.result(), "redfish": rf_f.result()},
        "boot_id": power.boot_id(node),
        "pids": pids,
        # What really runs (the package's file or the build tree's), from the
        # kernel rather than from what the lab meant to start.
        "sensor_exe": proc_exe(pids.get("sensor")),
        "processes": len(in_cg),
        "qemu": len(qemus),
        "faults": faults.active(node),
        "sensor_wanted": node.sensor_flag.exists(),
        "mgmt_ip": node.mgmt_ip, "inst_ip": node.inst_ip,
        "nova": {k: svc.get(k) for k in ("status", "state", "forced_down", "updated_at")}
        if svc else None,
        "servers": [s for s in servers if s.get("host") == node.name],
    }


def proc_exe(pid):
    if not isinstance(pid, int):
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def gather_status(show_secrets=False):
    cfg = lc.lab_config()
    out = {"lab_dir": str(lc.LAB_DIR), "configured": bool(cfg), "config": cfg,
           "lab_json": str(lc.LAB_JSON) if lc.LAB_JSON.exists() else None,
           "control_plane": None, "daemons": [], "nodes": [], "servers": [], "errors": []}
    if lc.CLOUD.exists() and (lc.VENV / "bin" / "python").exists() and not lc.NO_CLOUD:
        try:
            out["control_plane"] = cloud_json("status")
        except (lc.LabError, ValueError) as e:
            out["errors"].append(f"cloud status: {e}")
    cp = out["control_plane"] or {}
    if cp.get("nova_services"):
        try:
            out["servers"] = cloud_json("servers")
        except (lc.LabError, ValueError) as e:
            out["errors"].append(f"cloud servers: {e}")
    nova_svcs = {s["host"]: s for s in cp.get("nova_services") or []
                 if s.get("binary") == "nova-compute"}
    daemons_dir = lc.daemon_record_path("x").parent
    for rec_path in sorted(daemons_dir.glob("*.json")) if daemons_dir.exists() else []:
        rec = lc.read_json(rec_path) or {}
        out["daemons"].append({"name": rec_path.stem, "pid": rec.get("pid"),
                               "running": lc.record_alive(rec), "log": rec.get("log")})
    nodes = nodes_of(cfg) if cfg else known_nodes()
    with cf.ThreadPoolExecutor(max(1, len(nodes))) as ex:
        out["nodes"] = list(ex.map(lambda nd: node_status(nd, nova_svcs, out["servers"]), nodes))
    rss = 0
    for p in [p for nd in nodes for p in lc.cgroup_pids(nd.cgroup)] + \
            [d["pid"] for d in out["daemons"] if d["running"]]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            rss += int(Path(f"/proc/{p}/smaps_rollup").read_text().split("Rss:")[1].split()[0])
    out["node_half_rss_mib"] = round(rss / 1024, 1)
    out["controllers"] = controllers.statuses()
    if show_secrets and lc.BMC_PASSWORD.exists():
        out["bmc_password"] = lc.read_text(lc.BMC_PASSWORD)
    out["up"] = bool(cfg) and lc.LAB_JSON.exists() and bool(out["nodes"]) and all(
        nd["power"] == "on" for nd in out["nodes"]) and (lc.NO_CLOUD or bool(cp.get("running")))
    return out


def cmd_status(args):
    st = gather_status(args.show_secrets)
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return
    if not st["configured"] and not st["nodes"] and not st["controllers"]:
        print(f"no lab in {lc.LAB_DIR} (`lab up` makes one)")
        return
    cp = st["control_plane"] or {}
    print(f"LAB {lc.LAB_DIR}: {'up' if st['up'] else 'NOT fully up'}"
          + (f"; control plane RSS {cp.get('total', {}).get('rss_mib')} MiB" if cp else "")
          + f"; nodes+BMCs+receivers RSS {st['node_half_rss_mib']} MiB")
    print("\n%-16s %-8s %-4s %-5s %s" % ("SERVICE", "PID", "UP", "HTTP", "LOG"))
    for s in cp.get("services", []):
        print("%-16s %-8s %-4s %-5s %s" % (s["name"], s.get("pid") or "-",
                                           "yes" if s.get("running") else "no",
                                           {True: "ok", False: "NO"}.get(s.get("answering"), "-"),
                                           s.get("log")))
    for d in st["daemons"]:
        print("%-16s %-8s %-4s %-5s %s" % (d["name"][:16], d["pid"] or "-",
                                           "yes" if d["running"] else "no", "-", d["log"]))
    print("\n%-9s %-5s %-10s %-36s %-9s %-9s %-7s %-4s %-14s %s" % (
        "NODE", "POWER", "IPMI/RF", "BOOT ID", "SUPERVSR", "NOVA-CPU", "SENSOR", "QEMU",
        "NOVA SERVICE", "FAULTS"))
    for nd in st["nodes"]:
        nova = nd["nova"] or {}
        svc = (f"{nova.get('state')}/{nova.get('status')}"
               + ("/forced" if nova.get("forced_down") else "")) if nova else "-"
        print("%-9s %-5s %-10s %-36s %-9s %-9s %-7s %-4s %-14s %s" % (
            nd["name"], nd["power"], f"{nd['bmc']['ipmi']}/{nd['bmc']['redfish']}",
            nd["boot_id"] or "-", nd["pids"].get("supervisor", "-"),
            str(nd["pids"].get("nova-compute", "-"))[:9],
            str(nd["pids"].get("sensor", "-" if not nd["sensor_wanted"] else "wanted"))[:7],
            nd["qemu"], svc, ",".join(nd["faults"]) or "-"))
    if st["config"]:
        print("sensors run " + sensor_source(st["config"]))
    if st["controllers"]:
        print("\n%-6s %-15s %-5s %-6s %-9s %-8s %s" % ("CTL", "IP", "POWER", "PROCS", "ETCD",
                                                      "ETCD PID", "FAULTS"))
        for c in st["controllers"]:
            print("%-6s %-15s %-5s %-6s %-9s %-8s %s" % (
                c["name"], c["ip"], c["power"], c["processes"], c["etcd"]["state"],
                c["etcd"]["pid"] or "-", ",".join(c["faults"]) or "-"))
    if st["servers"]:
        print("\n%-36s %-26s %-8s %-9s %s" % ("SERVER", "NAME", "STATUS", "HOST", "ADDRESSES"))
        for s in st["servers"]:
            print("%-36s %-26s %-8s %-9s %s" % (s["id"], s["name"][:26], s["status"],
                                               s.get("host") or "-", ",".join(s.get("ips", []))))
    if st.get("bmc_password"):
        print(f"\nBMC: user admin, password {st['bmc_password']}")
    for e in st["errors"]:
        print(f"error: {e}")


# --- the rest --------------------------------------------------------------------

def cmd_fault(args):
    need_root()
    # Control-plane faults: NODE names a service; (start, stop, module).
    service_faults = {"api-500": (apifault.start, None, apifault),
                      "api-ok": (None, apifault.stop, apifault),
                      "freeze": (stall.freeze, None, stall),
                      "thaw": (None, stall.thaw, stall)}
    if args.kind in service_faults:
        start, stop, mod = service_faults[args.kind]
        began_unix_ms = int(time.time() * 1000)
        if start is not None:
            if args.seconds is None:
                raise lc.LabError(f"{args.kind} needs --seconds N")
            lines = start(args.node, args.seconds)
        else:
            lines = stop(args.node)
        if args.json:
            print(mod.as_json(args.kind, args.node, lines, began_unix_ms, args.seconds))
        else:
            for line in lines:
                print(line)
        return
    if lc.is_controller_name(args.node):
        cmd_controller_fault(args)
        return
    if args.kind in CONTROLLER_ONLY_FAULTS:
        raise lc.LabError(f"{args.kind} is a controller fault: `lab fault {args.kind} ctlN` "
                          f"(not {args.node!r})")
    node = lc.Node(args.node)
    # The fault's own moment, not the caller's: Python's start-up alone
    # takes 0.4 s or more here, which would count against the figures.
    began_unix_ms = int(time.time() * 1000)
    t = time.monotonic()
    opts = {}
    if args.kind in ("kdump", "kdump-send"):
        opts = {"dump_secs": args.dump_secs, "to": args.to}
    elif args.dump_secs != 10 or args.to:
        raise lc.LabError("--dump-secs and --to belong to `fault kdump` and `fault kdump-send`")
    lines = faults.run(args.kind, node, **opts)
    took = time.monotonic() - t
    if args.json:
        doc = {"fault": args.kind, "node": node.name, "did": lines,
               "began_unix_ms": began_unix_ms,
               "seconds": round(took, 3), "boot_id": power.boot_id(node),
               "power": "on" if power.is_on(node) else "off"}
        if args.kind == "kdump":
            doc["kdump"] = lc.read_json(node.fault_flag("kdump"))
        print(json.dumps(doc))
    else:
        for line in lines:
            print(line)


CONTROLLER_ONLY_FAULTS = ("partition", "unpartition", "etcd-stop", "etcd-start")


def cmd_controller_fault(args):
    ctl = lc.Controller(args.node)
    if args.kind not in controllers.KINDS:
        raise lc.LabError(f"{args.kind} is not a controller fault; on {ctl.name}: "
                          f"{', '.join(controllers.KINDS)}")
    began_unix_ms = int(time.time() * 1000)
    t = time.monotonic()
    lines = controllers.run_fault(args.kind, ctl)
    took = time.monotonic() - t
    if args.json:
        st = controllers.status(ctl)
        # The shape of a node's fault report (boot_id: none), plus the etcd member.
        print(json.dumps({"fault": args.kind, "node": ctl.name, "did": lines,
                          "began_unix_ms": began_unix_ms, "seconds": round(took, 3),
                          "boot_id": None, "power": st["power"], "etcd": st["etcd"],
                          "faults": st["faults"]}))
    else:
        for line in lines:
            print(line)


# --- controllers ---------------------------------------------------------------

def sensor_deciders_of(pid):
    """The deciders a running sensor streams to: its --decider arguments, or
    (run from the package's unit) VIGIL_DECIDERS in its environment."""
    argv = lc.proc_cmdline(pid)
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--decider"]
    if given:
        return given
    return [u for u in lc.proc_environ(pid).get("VIGIL_DECIDERS", "").split(",") if u]


def resync_sensors(strict):
    """Restart every running lab sensor whose --decider list is not
    lc.sensor_decider_urls() (the supervisor builds the list at start; the
    node keeps its power). Returns what it did. strict: a sensor that comes
    back without the list (a supervisor from an older checkout) fails it."""
    want = lc.sensor_decider_urls()
    done, stale = [], []
    cfg = lc.lab_config()
    for node in nodes_of(cfg) if cfg else []:
        rec = faults._proc(node, "sensor")
        if not rec or sensor_deciders_of(rec["pid"]) == want:
            continue
        power.request(node, "stop sensor")
        power.wait_proc(node, "sensor", running=False, deadline_s=20)
        with contextlib.redirect_stdout(sys.stderr):
            start_sensor(node)
        new = faults._proc(node, "sensor") or {}
        got = sensor_deciders_of(new.get("pid")) if new.get("pid") else []
        if got != want:
            sup = power.supervisor(node) or {}
            where = " ".join(lc.proc_cmdline(sup.get("pid"))[1:2]) if sup.get("pid") else "?"
            stale.append(f"{node.name} (its supervisor {where} started the sensor with "
                         f"--decider {got}, not {want}: it predates `lab controllers`; "
                         "`lab down` and `lab up` from this checkout)")
        else:
            done.append(f"{node.name}: sensor restarted (pid {new['pid']}) with "
                        f"{len(want)} --decider")
    if stale and strict:
        raise lc.LabError("sensors without every decider: " + "; ".join(stale))
    return done + [f"warning: {s}" for s in stale]


def controllers_answer(did, seconds):
    return {"controllers": [controllers.status(c) for c in lc.controllers_wanted()],
            "etcd_endpoints": [c.etcd_client_url for c in lc.controllers_wanted()],
            "sensor_deciders": lc.sensor_decider_urls(),
            "did": did, "seconds": round(seconds, 2)}


def cmd_controllers(args):
    need_root()
    t = time.monotonic()
    if args.action == "up":
        ensure_packages()
        for line in net.net_up():
            step(f"net: {line}")
        did = controllers.up(args.count or len(lc.controllers_wanted()) or 3, step)
        for line in did:
            step(line)
        did += resync_sensors(strict=True)
    else:
        did = controllers.down()
        did += resync_sensors(strict=False)
    refresh_lab_json()
    took = time.monotonic() - t
    if args.json:
        print(json.dumps(controllers_answer(did, took), indent=1, sort_keys=True))
        return
    for line in did:
        print(line)
    if args.action == "up":
        print(f"controllers up in {took:.1f}s: "
              + ", ".join(f"{c.name} {c.ip}" for c in lc.controllers_wanted())
              + "; etcd endpoints " + ",".join(c.etcd_client_url for c in lc.controllers_wanted()))
    else:
        print(f"controllers down in {took:.1f}s")


def cmd_controller_exec(argv):
    """`lab controller exec ctlN -- CMD ARGS...` (parsed by hand: everything
    after `--` is CMD's)."""
    usage = "usage: lab controller exec ctlN -- CMD ARGS..."
    if len(argv) < 2 or argv[0] != "exec":
        raise lc.LabError(usage)
    name, rest = argv[1], argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if not rest:
        raise lc.LabError(usage)
    need_root()
    controllers.exec_in(lc.Controller(name), rest)


def cmd_sensor(args):
    need_root()
    node = lc.Node(args.node)
    if args.action == "start":
        start_sensor(node)
    else:
        node.sensor_flag.unlink(missing_ok=True)
        refresh_lab_json()
        if power.is_on(node) and faults._proc(node, "sensor"):
            power.request(node, "stop sensor")
            power.wait_proc(node, "sensor", running=False, deadline_s=20)
            print(f"{node.name}: vigil-sensor stopped (and not started at next power on)")
        else:
            print(f"{node.name}: no sensor running; not started at next power on")


def start_sensor(node):
    """Wants a sensor on the node (kept across power cycles) and, when the
    node is on, waits until it runs."""
    cfg = lc.lab_config()
    if packaged_deb() is not None and \
            (cfg.get("sensor_pkg") or {}).get("sha256") != sha256_of(packaged_deb()):
        # Another package than the running sensors': all of them switch.
        cfg = converge_sensor_source(cfg)
    binary = sensor_binary(cfg)
    if not binary:
        raise lc.LabError("no vigil-sensor binary: build it (cargo build -p vigil-sensor) "
                          "or set VIGIL_SENSOR_BIN or VIGIL_PACKAGED")
    if cfg.get("sensor_bin") != binary and not cfg.get("sensor_pkg"):
        cfg["sensor_bin"] = binary
        lc.write_json(lc.CONFIG_JSON, cfg)
    node.sensor_flag.touch()
    refresh_lab_json()
    if not power.is_on(node):
        print(f"{node.name}: sensor configured; the node is off, it starts at power on")
        return
    asked = time.time()
    power.request(node, "start sensor")

    def started():
        procs = lc.read_json(node.procs_json, {}) or {}
        rec = procs.get("sensor") or {}
        # Only this start's failure: an older one (say, with a binary since
        # replaced) stays recorded until the supervisor has tried again.
        if rec.get("error") and rec.get("at", 0) >= asked:
            raise lc.LabError(f"sensor on {node.name}: {rec['error']} (set VIGIL_SENSOR_BIN "
                              "or build it: cargo build -p vigil-sensor)")
        return rec if rec.get("pid") and lc.record_alive(rec) else None
    rec = lc.wait_for(f"vigil-sensor to run on {node.name}", 30, started)
    argv = lc.proc_cmdline(rec["pid"])
    if cfg.get("sensor_pkg") and argv[1:] != ["run"]:
        # The node's supervisor is the code of the checkout that started its
        # BMC: one from before packaged sensors starts the package's binary
        # with the build-tree command line. Never let that pass as the unit's.
        sup = power.supervisor(node) or {}
        where = " ".join(lc.proc_cmdline(sup.get("pid"))[1:2]) if sup.get("pid") else "?"
        raise lc.LabError(f"{node.name}: its supervisor {where} started the sensor as "
                          f"{' '.join(argv)}, not as the package's unit says (ExecStart= "
                          "... run): it predates VIGIL_PACKAGED; `lab down` and `lab up` "
                          "from this checkout")
    print(f"{node.name}: vigil-sensor running (pid {rec['pid']}, log {rec.get('log')})")


def cmd_pid(args):
    name = args.name
    rec = None
    if "/" in name:
        node_name, what = name.split("/", 1)
        node = lc.Node(node_name)
        if what == "supervisor":
            rec = lc.read_json(node.supervisor_pid)
        else:
            rec = (lc.read_json(node.procs_json, {}) or {}).get(what)
    elif lc.daemon_record_path(name).exists():
        rec = lc.read_json(lc.daemon_record_path(name))
    else:
        parts = (lc.read_text(lc.RUN / f"{name}.pid") or "").split()
        if parts:
            rec = {"pid": int(parts[0]),
                   "starttime": int(parts[1]) if len(parts) > 1 else None}
    if rec and lc.record_alive(rec):
        print(rec["pid"])
        return 0
    print(f"{name}: not running (known: control-plane services as in `lab status`, daemons "
          f"in {lc.NODES_RUN / 'daemons'}, NODE/nova-compute|sensor|supervisor)",
          file=sys.stderr)
    return 1


def refresh_lab_json():
    """Keep lab.json's per-node sensor flag current after `sensor start|stop`."""
    doc = lc.read_json(lc.LAB_JSON)
    if doc:
        lc.write_json(lc.LAB_JSON, lab_info(lc.lab_config(), doc.get("up_seconds")))


# Nova's answer when a host still has evacuations it has not cleaned up
# (nova/api/openstack/compute/services.py, _check_for_evacuations).
DONE_EVACUATIONS = re.compile(r"Unable to force up host (\S+) as `done` evacuation")


def cmd_reset_services(args):
    """`cloud reset-services`, plus Nova's own remedy for the one refusal it
    has: a host evacuated while its nova-compute kept running (a node powered
    back on mid-evacuation) keeps its evacuation records `done` until that
    nova-compute restarts, and Nova will not un-force it before. Restarting it
    runs init_host, which cleans up the evacuated guests and completes them."""
    restarted = set()
    while True:
        try:
            sys.stdout.write(cloud("reset-services", capture=True, timeout=300))
            return
        except lc.LabError as e:
            m = DONE_EVACUATIONS.search(str(e))
            if not m or m.group(1) in restarted:
                raise
            node = lc.Node(m.group(1))
        restarted.add(node.name)
        print(f"{node.name}: Nova keeps its evacuations `done` until its nova-compute "
              "restarts; restarting nova-compute", flush=True)
        for line in faults.f_kill_nova_compute(node) + faults.f_heal(node):
            print(line, flush=True)
        # A report after the restart means init_host has run.
        sys.stdout.write(cloud("wait-compute", node.name, "--timeout", "120",
                               capture=True, timeout=300))


def cmd_info(args):
    if not lc.LAB_JSON.exists():
        raise lc.LabError(f"no {lc.LAB_JSON}: the lab is not up (`lab up`)")
    print(lc.LAB_JSON.read_text(), end="")


def cmd_net(args):
    need_root()
    lines = net.net_up() if args.action == "up" else net.net_down()
    for line in lines:
        print(line)
    if not lines:
        print(f"net {args.action}: nothing to do")


FAIL_SPAWN_DIR = lc.STATE / "fail-spawn"
LAB_DRIVER = lc.CLOUD_DIR / "vigil_lab_driver.py"


def stale_drivers(cfg):
    """Nodes whose running nova-compute started before the lab virt driver
    last changed: they run an older driver (maybe without the fail-spawn hook)
    until nova-compute restarts."""
    changed = LAB_DRIVER.stat().st_mtime
    stale = []
    for node in nodes_of(cfg) if cfg else known_nodes():
        rec = (lc.read_json(node.procs_json, {}) or {}).get("nova-compute") or {}
        if lc.record_alive(rec) and (rec.get("started_at") or 0) < changed:
            stale.append(node.name)
    return stale


def cmd_fail_spawn(args):
    need_root()
    uuid = args.uuid.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid):
        raise lc.LabError(f"{args.uuid!r} is not a server uuid")
    if args.count < 0:
        raise lc.LabError(f"count {args.count}: must be 0 (clear) or more")
    path = FAIL_SPAWN_DIR / uuid
    if args.count == 0:
        path.unlink(missing_ok=True)
    else:
        FAIL_SPAWN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{args.count} {args.mode}\n")
        tmp.replace(path)
    stale = stale_drivers(lc.lab_config())
    if args.json:
        print(json.dumps({"uuid": uuid, "count": args.count, "mode": args.mode,
                          "file": str(path), "stale_nodes": stale}))
        return
    print(f"{uuid}: the next {args.count} spawn(s) fail as a {args.mode} failure ({path})"
          if args.count
          else f"{uuid}: spawns no longer fail")
    for name in stale:
        print(f"warning: {name}'s nova-compute started before {LAB_DRIVER} changed and may "
              f"not have the hook: `lab fault kill-nova-compute {name}` then "
              f"`lab fault heal {name}`")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="lab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("up")
    s.add_argument("--nodes", type=int, default=None)
    s.add_argument("--sensors", action="store_true")
    s.add_argument("--report-interval", type=int, default=None)
    sub.add_parser("down")
    sub.add_parser("purge")
    s = sub.add_parser("status")
    s.add_argument("--json", action="store_true")
    s.add_argument("--show-secrets", action="store_true")
    s = sub.add_parser("fault")
    s.add_argument("kind", choices=faults.KINDS + ("freeze", "thaw", "api-500", "api-ok")
                   + CONTROLLER_ONLY_FAULTS)
    s.add_argument("node", help="a node, a controller (ctlN: power-off, power-on, partition, "
                   "unpartition, etcd-stop, etcd-start, heal), or for freeze/thaw/api-500/"
                   "api-ok a control-plane service")
    s.add_argument("--seconds", type=float, default=None)
    s.add_argument("--dump-secs", type=int, default=10,
                   help="kdump: how long the crash kernel sends (one message a second)")
    s.add_argument("--to", action="append", default=[], metavar="ADDR[:PORT]",
                   help="kdump: where fence_kdump_send sends (repeatable; default "
                   f"{lc.HOST_MGMT_IP}:7410)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("boot")
    s.add_argument("n")
    s.add_argument("node")
    s = sub.add_parser("servers")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("delete-servers")
    s = sub.add_parser("pid")
    s.add_argument("name")
    s = sub.add_parser("sensor")
    s.add_argument("action", choices=("start", "stop"))
    s.add_argument("node")
    s = sub.add_parser("wait-compute")
    s.add_argument("nodes", nargs="+")
    s.add_argument("--timeout", default="120")
    sub.add_parser("info")
    sub.add_parser("reset-services")
    sub.add_parser("token")
    s = sub.add_parser("net")
    s.add_argument("action", choices=("up", "down"))
    s = sub.add_parser("controllers")
    s.add_argument("action", choices=("up", "down"))
    # Default: as many as there are, else 3.
    s.add_argument("--count", type=int, default=None)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("controller", help="controller exec ctlN -- CMD ARGS...")
    s.add_argument("words", nargs=argparse.REMAINDER)
    s = sub.add_parser("fail-spawn")
    s.add_argument("uuid")
    s.add_argument("count", nargs="?", type=int, default=1)
    s.add_argument("--as", dest="mode", choices=("spawn", "claim"), default="spawn")
    s.add_argument("--json", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["controller"]:
        try:
            cmd_controller_exec(argv[1:])
        except (lc.LabError, OSError) as e:
            print(f"lab controller: FAILED: {e}", file=sys.stderr)
            return 1
    args, rest = ap.parse_known_args(argv)
    if rest and args.cmd not in ("boot", "delete-servers"):
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.cmd == "up":
            args.nodes_given = args.nodes is not None
            args.nodes = args.nodes if args.nodes is not None else \
                int(lc.lab_config().get("nodes") or 3)
            cmd_up(args)
        elif args.cmd == "boot":
            lc.Node(args.node)
            sys.stdout.write(cloud("boot", args.n, args.node, *rest, capture=True))
        elif args.cmd == "delete-servers":
            sys.stdout.write(cloud("delete-servers", *rest, capture=True, timeout=900))
        elif args.cmd == "pid":
            return cmd_pid(args)
        elif args.cmd == "servers":
            sys.stdout.write(cloud("servers", *(["--json"] if args.json else []), capture=True))
        elif args.cmd == "reset-services":
            cmd_reset_services(args)
        elif args.cmd == "token":
            sys.stdout.write(cloud(args.cmd, capture=True, timeout=300))
        elif args.cmd == "wait-compute":
            sys.stdout.write(cloud("wait-compute", *args.nodes, "--timeout", args.timeout,
                                   capture=True))
        else:
            {"down": cmd_down, "purge": cmd_purge, "status": cmd_status, "fault": cmd_fault,
             "sensor": cmd_sensor, "info": cmd_info, "net": cmd_net,
             "controllers": cmd_controllers,
             "fail-spawn": cmd_fail_spawn}[args.cmd](args)
    except lc.LabError as e:
        print(f"lab {args.cmd}: FAILED: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `lab status | head`: the reader left; not an error of the lab.
        return 0
    except KeyboardInterrupt:
        print(f"lab {args.cmd}: interrupted; `lab down` cleans up", file=sys.stderr)
        return 130
    return 0
