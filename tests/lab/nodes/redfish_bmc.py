"""Redfish BMCs of the lab nodes: sushy-tools' emulator (PyPI, unmodified)
with a systems driver whose one system is the lab node itself.

    <lab venv>/bin/python redfish_bmc.py compute1 compute2 ...

Node N's BMC listens on http://198.51.100.1:(8000+N) (CONTRACT.md) and shows
exactly one system, `computeN`; HTTP basic auth (admin / state/bmc-password,
through sushy-tools' own bcrypt htpasswd middleware). One process serves every
node's port (one werkzeug server per port, one thread each): the emulator costs
~75 MiB of RSS per process, and the nodes' BMCs share nothing but that.

PowerState is the truth: "On" while the node's supervisor runs (power.py).
ComputerSystem.Reset:
  On                        -> ipmi_sim powers the node on (it owns the machine)
  ForceOff                  -> power loss now (cgroup.kill), as `lab fault power-off`
  GracefulShutdown          -> orderly shutdown (SIGTERM, grace period, power off)
  ForceRestart, PowerCycle  -> ForceOff, then On
  GracefulRestart           -> GracefulShutdown, then On
  Nmi, PushPowerButton      -> not supported (400)
Every action returns only once the node is off (ForceOff) or the power-on was
accepted by ipmi_sim (On); a client still reads PowerState back to confirm, as
it must with a real BMC.
"""

import os
import sys
import threading
import time

import flask
from werkzeug.serving import make_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bcrypt  # noqa: E402  (sushy-tools dependency)
from sushy_tools import error  # noqa: E402
from sushy_tools.emulator import main as emulator  # noqa: E402
from sushy_tools.emulator.resources.systems.base import AbstractSystemsDriver  # noqa: E402

import bmc  # noqa: E402
import labcommon as lc  # noqa: E402
import power  # noqa: E402


class NodeBmc:
    """The state of one node's BMC."""

    def __init__(self, node):
        self.node = node
        # The node's one system UUID (its product_uuid; CONTRACT.md "Node"):
        # Vigil checks that a BMC is the node's own by it.
        self.uuid = node.system_uuid
        self.boot_device = "Hdd"
        # One power action at a time, as a BMC serializes them.
        self.lock = threading.Lock()


class LabNodeDriver(AbstractSystemsDriver):
    """sushy-tools systems driver: on port 8000+N, the one system is computeN."""

    def __init__(self, nodes):
        super().__init__()
        self.by_port = {node.redfish_port: NodeBmc(node) for node in nodes}

    def _bmc(self):
        # Which BMC a request is for: the port it arrived on.
        port = int(flask.request.environ.get("SERVER_PORT", "0"))
        bmc_ = self.by_port.get(port)
        if bmc_ is None:
            raise error.NotFound(f"no lab node behind port {port}")
        return bmc_

    @property
    def node(self):
        return self._bmc().node

    @property
    def _uuid(self):
        return self._bmc().uuid

    @property
    def _lock(self):
        return self._bmc().lock

    @property
    def driver(self):
        return "<vigil-lab node>"

    @property
    def systems(self):
        return [self.node.name]

    def _check(self, identity):
        if identity not in (self.node.name, self._uuid):
            raise error.NotFound(f"no system {identity} on the BMC of {self.node.name}")

    def uuid(self, identity):
        self._check(identity)
        return self._uuid

    def name(self, identity):
        self._check(identity)
        return self.node.name

    def get_power_state(self, identity):
        self._check(identity)
        # `lab fault bmc-lies`: firmware that reads Off for a running machine
        # (a BMC reset mid-read, a wrong sensor), which Vigil must never
        # believe over a node that answers.
        if self.node.fault_flag("bmc-lies").exists():
            return "Off"
        return "On" if power.is_on(self.node) else "Off"

    def _on(self):
        if not power.is_on(self.node):
            power.wait_off(self.node, 60)
            power.power_on_via_ipmi(self.node)

    def _force_off(self):
        killed, was_on = power.cut(self.node)
        emulator.app.logger.info("%s: ForceOff: power cut (%d processes killed, was %s)",
                                 self.node.name, killed, "on" if was_on else "off")

    def _graceful(self):
        if power.graceful_shutdown(self.node):
            power.wait_off(self.node, 60)

    def set_power_state(self, identity, state):
        self._check(identity)
        with self._lock:
            try:
                if state in ("On", "ForceOn"):
                    self._on()
                elif state == "ForceOff":
                    self._force_off()
                elif state == "GracefulShutdown":
                    self._graceful()
                elif state in ("ForceRestart", "PowerCycle"):
                    self._force_off()
                    self._on()
                elif state == "GracefulRestart":
                    self._graceful()
                    self._on()
                else:
                    raise error.BadRequest(f"ResetType {state} is not supported by this BMC")
            except lc.LabError as e:
                raise error.FishyError(f"{state} on {self.node.name} failed: {e}") from e

    def get_boot_device(self, identity):
        self._check(identity)
        return self._bmc().boot_device

    def set_boot_device(self, identity, boot_source):
        self._check(identity)
        self._bmc().boot_device = boot_source

    def get_boot_mode(self, identity):
        self._check(identity)
        return "Legacy"

    def get_total_memory(self, identity):
        self._check(identity)
        return 8

    def get_total_cpus(self, identity):
        self._check(identity)
        return 4

    def get_nics(self, identity):
        self._check(identity)
        mac = "02:00:00:00:%02x:%02x" % (self.node.index >> 8, self.node.index & 0xFF)
        return [{"id": mac, "mac": mac}]


def main():
    nodes = [lc.Node(name) for name in sys.argv[1:]]
    if not nodes:
        sys.exit("usage: redfish_bmc.py compute1 [compute2 ...]")
    # sushy-tools' basic auth reads an Apache htpasswd file with bcrypt
    # digests only.
    htpasswd = lc.ETC / "bmc" / "redfish.htpasswd"
    digest = bcrypt.hashpw(bmc.password().encode(), bcrypt.gensalt(rounds=6)).decode()
    lc.write_atomic(htpasswd, f"admin:{digest}\n", 0o600)

    driver = LabNodeDriver(nodes)
    # The emulator picks its systems driver in Application.systems; the lab's
    # driver is not one of its built-ins, so replace that property.
    emulator.Application.systems = property(lambda _self: driver)
    emulator.app.configure(extra_config={
        "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
        # "full": Managers and Chassis as a real BMC has them (what the
        # driver cannot do - BIOS, virtual media - answers 501/404).
        "SUSHY_EMULATOR_FEATURE_SET": "full",
    })
    servers = [make_server(lc.HOST_MGMT_IP, node.redfish_port, emulator.app, threaded=True)
               for node in nodes]
    threads = [threading.Thread(target=srv.serve_forever, name=f"redfish-{node.name}",
                                daemon=True) for srv, node in zip(servers, nodes)]
    for t in threads:
        t.start()
    emulator.app.logger.warning(
        "Redfish BMCs up (pid %d, %s): %s", os.getpid(), time.strftime("%H:%M:%S"),
        ", ".join(f"{n.name} http://{lc.HOST_MGMT_IP}:{n.redfish_port}" for n in nodes))
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
