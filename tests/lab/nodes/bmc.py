"""The BMCs: one IPMI (OpenIPMI `ipmi_sim`) and one Redfish (sushy-tools'
emulator with the lab's systems driver, redfish_bmc.py) per node, on the host,
so they survive the node's power loss (CONTRACT.md "Node").

IPMI:    198.51.100.1:(9000+N), lanplus, user admin, password state/bmc-password.
Redfish: http://198.51.100.1:(8000+N)/redfish/v1/Systems/computeN, HTTP basic
         auth with the same user and password.
"""

import base64
import json
import os
import re
import secrets
import string
import sys
import urllib.error
import urllib.request

import labcommon as lc


def password():
    """The BMC password, generated once per lab (IPMI allows at most 20
    characters; letters and digits keep lan.conf quoting trivial)."""
    if not lc.BMC_PASSWORD.exists():
        alphabet = string.ascii_letters + string.digits
        lc.write_atomic(lc.BMC_PASSWORD, "".join(secrets.choice(alphabet) for _ in range(16)),
                        0o600)
    pw = lc.read_text(lc.BMC_PASSWORD)
    if not pw:
        raise lc.LabError(f"{lc.BMC_PASSWORD} is empty; `lab down` and `lab up` make a new one")
    return pw


def supervisor_cmd(node):
    return f"{sys.executable} {lc.NODES_DIR / 'supervisor.py'} {node.name}"


def write_ipmi_config(node):
    d = node.bmc_dir
    (d / "ipmi-state").mkdir(parents=True, exist_ok=True)
    # Layout from notes/bmc.md. `serial ... codec VM` is required for
    # startcmd to be used at all; it listens on loopback only. kill_wait 3:
    # a supervisor that ignores SIGTERM is SIGKILLed after 3 s, not 20.
    # No "none" auth type anywhere: every session needs the password.
    conf = f"""name "vigil-lab-{node.name}"
set_working_mc 0x20
  startlan 1
    addr {lc.HOST_MGMT_IP} {node.ipmi_port}
    priv_limit admin
    allowed_auths_callback md5 straight
    allowed_auths_user md5 straight
    allowed_auths_operator md5 straight
    allowed_auths_admin md5 straight
    guid {lc.ipmi_guid_hex(node.system_uuid)}
  endlan
  serial 15 127.0.0.1 {node.ipmi_vm_port} codec VM
  startcmd "{supervisor_cmd(node)}"
  startnow false
  poweroff_wait 0
  kill_wait 3
  user 2 true  "admin"   "{password()}" admin    10       md5 straight
"""
    lc.write_atomic(d / "lan.conf", conf, 0o600)
    lc.write_atomic(d / "sim.emu", "mc_setbmc 0x20\n"
                    "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
                    "sel_enable 0x20 1000 0x0a\n"
                    "mc_enable 0x20\n")


def node_env():
    """Environment of the BMC processes, inherited by the supervisor they
    start: the lab dir and nothing of the caller's shell."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root"),
           "VIGIL_LAB_DIR": str(lc.LAB_DIR)}
    for k in ("VIGIL_SENSOR_BIN", "RUST_LOG", "VIGIL_LAB_TOOLS_PYTHON", "VIGIL_LAB_RUN_COMPUTE"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def ipmi_status(node):
    """'on' / 'off' as ipmi_sim reports it, or raise."""
    out = lc.run(lc.ipmitool_argv(node) + ["chassis", "power", "status"], timeout=15).stdout
    if "is on" in out:
        return "on"
    if "is off" in out:
        return "off"
    raise lc.LabError(f"unexpected answer from IPMI BMC of {node.name}: {out.strip()!r}")


def ipmi_guid_line(node):
    """The `guid` line of the node's lan.conf as written (None if absent)."""
    try:
        text = (node.bmc_dir / "lan.conf").read_text()
    except OSError:
        return None
    m = re.search(r"^\s*guid\s+([0-9a-fA-F]{32})\s*$", text, re.M)
    return m.group(1).lower() if m else None


def identity_problems(node):
    """Why the node's BMCs do not serve its system UUID (empty: they do). A
    BMC started by an older lab served another one; `up` restarts it."""
    problems = []
    if lc.read_text(node.product_uuid_path) != node.system_uuid:
        problems.append(f"{node.name}: {node.product_uuid_path} is not {node.system_uuid}")
    if lc.daemon_alive(f"{node.name}-ipmi") and \
            ipmi_guid_line(node) != lc.ipmi_guid_hex(node.system_uuid):
        problems.append(f"{node.name}: its IPMI BMC's guid is not its system UUID")
    if lc.daemon_alive(REDFISH_DAEMON):
        try:
            served = redfish_get(node, f"/redfish/v1/Systems/{node.name}").get("UUID")
        except (OSError, urllib.error.URLError, ValueError) as e:
            served = f"unreadable ({e})"
        if served != node.system_uuid:
            problems.append(f"{node.name}: its Redfish BMC's UUID is {served}, "
                            f"not {node.system_uuid}")
    return problems


def start_ipmi(node):
    name = f"{node.name}-ipmi"
    if lc.daemon_alive(name):
        return False
    write_ipmi_config(node)
    d = node.bmc_dir
    # -n: no console (with stdin on /dev/null ipmi_sim aborts otherwise;
    # notes/bmc.md).
    lc.spawn_daemon(name, ["ipmi_sim", "-c", str(d / "lan.conf"), "-f", str(d / "sim.emu"),
                           "-s", str(d / "ipmi-state"), "-n"],
                    lc.LOGS / "bmc" / f"{name}.log", env=node_env())

    def answers():
        if not lc.daemon_alive(name):
            raise lc.LabError(f"ipmi_sim for {node.name} exited; log: "
                              f"{lc.LOGS / 'bmc' / (name + '.log')}:\n"
                              + lc.tail(lc.LOGS / "bmc" / f"{name}.log"))
        try:
            return ipmi_status(node)
        except lc.LabError:
            return None
    lc.wait_for(f"IPMI BMC of {node.name} on {lc.HOST_MGMT_IP}:{node.ipmi_port}", 15, answers, 0.2)
    return True


def redfish_url(node):
    return f"http://{lc.HOST_MGMT_IP}:{node.redfish_port}"


def redfish_get(node, path, timeout=5):
    req = urllib.request.Request(redfish_url(node) + path)
    token = base64.b64encode(f"admin:{password()}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def redfish_power_state(node):
    return redfish_get(node, f"/redfish/v1/Systems/{node.name}")["PowerState"]


REDFISH_DAEMON = "redfish-bmcs"


def start_redfish(nodes):
    """One emulator process for every node's Redfish BMC (redfish_bmc.py)."""
    if lc.daemon_alive(REDFISH_DAEMON):
        return False
    py = lc.tools_python()
    if not os.path.exists(py):
        raise lc.LabError(f"no lab venv python at {py}; `tests/lab/cloud/cloud install` makes it")
    log = lc.LOGS / "bmc" / "redfish.log"
    lc.spawn_daemon(REDFISH_DAEMON, [py, str(lc.NODES_DIR / "redfish_bmc.py"),
                                     *[n.name for n in nodes]], log, env=node_env())

    def answers():
        if not lc.daemon_alive(REDFISH_DAEMON):
            raise lc.LabError(f"the Redfish BMCs exited; log {log}:\n" + lc.tail(log))
        try:
            return all(redfish_power_state(n) for n in nodes)
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return None
    lc.wait_for(f"Redfish BMCs at {', '.join(redfish_url(n) for n in nodes)} (log {log})", 30,
                answers, 0.2)
    return True


def stop_ipmi(node):
    return lc.stop_daemon(f"{node.name}-ipmi")
