"""Vigil lab virt driver: Nova's fake driver, plus guests that look real from the node.

`compute_driver = vigil_lab_driver.LabDriver` (run-compute's pyshim makes it
nova.virt.vigil_lab_driver).  It is `nova.virt.fake.FakeDriverWithoutFakeNodes` (stable node
UUID in $state_path/compute_id, restartable) with three additions:

* every running guest is a real process: `$VIGIL_LAB_DIR/bin/qemu-system-x86_64
  -name guest=instance-XXXXXXXX,debug-threads=on ... -uuid <uuid> ...` (the lab's
  fakeqemu.c: comm "qemu-system-x86", one "CPU n/KVM" thread per vCPU burning
  ~1 % CPU).  It is started with -daemonize, so it is a detached grandchild of
  nova-compute that keeps the node's netns and cgroup and outlives nova-compute
  (as a libvirt guest outlives nova-compute);
* the server's fixed IPv4 addresses are added as /32 on the node's instance
  interface (`inst0`), so they answer ping; a gratuitous ARP is sent so the host
  bridge learns the new place at once after an evacuation;
* guests are recorded in $state_path/lab-vms/<uuid>.json (like libvirt's
  persistent domain XML).  When nova-compute starts, a guest whose qemu still
  runs (nova-compute was only restarted) is adopted as RUNNING; a guest whose
  qemu is gone (the node lost power) is reported SHUTDOWN - the truth - and its
  address is removed.  Nova then handles it as it would a libvirt guest after a
  host crash (its periodic power-state sync stops it).

Failure hook (tests): a file `$VIGIL_LAB_DIR/state/fail-spawn/<instance uuid>`
holding a count N > 0 makes the next N spawns of that instance on any node fail
(before anything is started), the file counting down and removed at 0.  An
evacuation is a spawn on the destination, so this makes Nova record a failed
evacuation: migration `failed`, the server still on the old host, its fault
saying why.  "N" alone (or "N spawn") raises a NovaException: the server goes
ERROR.  "N claim" raises ComputeResourcesUnavailable, as a destination's claim
or late server-group check does: Nova rolls the server back to the state it
had (e.g. still ACTIVE).  `tests/lab/lab fail-spawn UUID [COUNT] [--as claim]`
writes it.  The
driver is read when nova-compute starts: a nova-compute started before this
file changed must be restarted (`lab fault kill-nova-compute NODE`, then
`lab fault heal NODE`) to have the hook.

Power off / on: the qemu process exits / a new one starts (as with libvirt).
Pause / unpause: SIGSTOP / SIGCONT.  Reboot: a new qemu process.
A qemu that dies on its own is reported SHUTDOWN (as a crashed libvirt domain).
"""

import json
import os
import signal
import socket
import struct
import subprocess
import time

from oslo_config import cfg
from oslo_log import log as logging

from nova.compute import power_state
from nova import exception
from nova.virt import fake
from nova.virt import hardware

LOG = logging.getLogger(__name__)
CONF = cfg.CONF

_LAB_DIR = os.environ.get("VIGIL_LAB_DIR", "/var/lib/vigil-lab")
CONF.register_opts([
    cfg.StrOpt("qemu_binary",
               default=os.path.join(_LAB_DIR, "bin", "qemu-system-x86_64"),
               help="The lab's fake qemu (fakeqemu.c)"),
    cfg.StrOpt("instance_interface", default="inst0",
               help="Interface in the node's netns that gets the guests' /32s"),
    cfg.StrOpt("vm_dir", default=None,
               help="Guest records; default $state_path/lab-vms"),
], group="vigil_lab")


def _pid_is_guest(pid, uuid):
    """True if pid is a live (not zombie) fake qemu for this uuid."""
    if not pid:
        return False
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        with open("/proc/%d/stat" % pid) as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return False
    if st in ("Z", "X"):
        return False
    try:
        i = argv.index(b"-uuid")
    except ValueError:
        return False
    return i + 1 < len(argv) and argv[i + 1].decode() == uuid


FAIL_SPAWN_DIR = os.path.join(_LAB_DIR, "state", "fail-spawn")


def _take_spawn_failure(uuid):
    """If the lab asked this instance's spawn to fail, count one down and
    return (mode, message to fail with); else None.  Never raises by itself."""
    path = os.path.join(FAIL_SPAWN_DIR, uuid)
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        LOG.warning("vigil lab driver: cannot read %s: %s", path, e)
        return None
    parts = text.split() or ["1"]
    mode = parts[1] if len(parts) > 1 else "spawn"
    try:
        left = int(parts[0])
    except ValueError:
        left = None
    if left is None or mode not in ("spawn", "claim"):
        LOG.warning("vigil lab driver: %s holds %r, not 'COUNT [spawn|claim]'; "
                    "ignored", path, text)
        return None
    if left <= 0:
        return None
    try:
        if left - 1 > 0:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d %s\n" % (left - 1, mode))
            os.replace(tmp, path)
        else:
            os.unlink(path)
    except OSError as e:
        LOG.warning("vigil lab driver: cannot count down %s: %s", path, e)
    return mode, ("vigil lab: spawn of %s on %s failed on purpose (%s, %s; "
                  "%d more to fail)" % (uuid, CONF.host, path, mode, left - 1))


def _pid_stopped(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


class LabDriver(fake.FakeDriverWithoutFakeNodes):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self._vm_dir = (CONF.vigil_lab.vm_dir or
                        os.path.join(CONF.state_path, "lab-vms"))
        self._qemu = CONF.vigil_lab.qemu_binary
        self._dev = CONF.vigil_lab.instance_interface

    # ------------------------------------------------------------ records
    def _rec_path(self, uuid):
        return os.path.join(self._vm_dir, uuid + ".json")

    def _load(self, uuid):
        try:
            with open(self._rec_path(uuid)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _save(self, rec):
        os.makedirs(self._vm_dir, exist_ok=True)
        tmp = self._rec_path(rec["uuid"]) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, self._rec_path(rec["uuid"]))

    def _forget(self, uuid):
        for p in (self._rec_path(uuid), self._pidfile(uuid)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _pidfile(self, uuid):
        return os.path.join(self._vm_dir, uuid + ".pid")

    # ------------------------------------------------------------ addresses
    def _run(self, argv):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise exception.NovaException(
                "vigil lab driver: %s failed (rc %d): %s"
                % (" ".join(argv), r.returncode, r.stderr.strip()))
        return r

    def _dev_ips(self):
        """IPv4 /32 addresses now on the instance interface."""
        r = self._run(["ip", "-4", "-o", "addr", "show", "dev", self._dev])
        have = set()
        for line in r.stdout.splitlines():
            f = line.split()
            if "inet" in f:
                ip, _, plen = f[f.index("inet") + 1].partition("/")
                if plen == "32":
                    have.add(ip)
        return have

    def _add_ips(self, ips):
        have = self._dev_ips()
        for ip in ips:
            if ip not in have:
                self._run(["ip", "addr", "add", ip + "/32", "dev", self._dev])
            self._garp(ip)

    def _del_ips(self, ips):
        have = self._dev_ips()
        for ip in ips:
            if ip in have:
                self._run(["ip", "addr", "del", ip + "/32", "dev", self._dev])

    def _garp(self, ip):
        """Gratuitous ARP on the instance interface (the address moved here)."""
        try:
            with open("/sys/class/net/%s/address" % self._dev) as f:
                mac = bytes.fromhex(f.read().strip().replace(":", ""))
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            try:
                s.bind((self._dev, 0))
                ipb = socket.inet_aton(ip)
                arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1,
                                  mac, ipb, b"\xff" * 6, ipb)
                s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
            finally:
                s.close()
        except OSError as e:
            # the address is in place; only the host's ARP cache may be stale
            LOG.warning("vigil lab driver: gratuitous ARP for %s on %s "
                        "failed: %s", ip, self._dev, e)

    @staticmethod
    def _ips_of(network_info):
        ips = []
        for vif in network_info or []:
            for fip in vif.fixed_ips():
                if fip["version"] == 4:
                    ips.append(str(fip["address"]))
        return ips

    # ------------------------------------------------------------ processes
    def _start_qemu(self, instance, rec):
        if not os.access(self._qemu, os.X_OK):
            raise exception.NovaException(
                "vigil lab driver: no fake qemu at %s (run tests/lab/cloud/"
                "cloud install)" % self._qemu)
        self._stop_qemu(rec)
        uuid = rec["uuid"]
        vcpus = max(1, int(rec["vcpus"]))
        mac = rec.get("mac") or "fa:16:3e:00:00:00"
        pidfile = self._pidfile(uuid)
        os.makedirs(self._vm_dir, exist_ok=True)
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass
        argv = [
            self._qemu,
            "-name", "guest=%s,debug-threads=on" % rec["name"],
            "-machine", "pc-q35-7.2,usb=off,dump-guest-core=off",
            "-accel", "kvm", "-cpu", "host",
            "-m", str(rec["memory_mb"]),
            "-smp", "%d,sockets=%d,cores=1,threads=1" % (vcpus, vcpus),
            "-uuid", uuid,
            "-smbios", "type=1,manufacturer=OpenStack Foundation,product="
                       "OpenStack Nova,serial=%s,uuid=%s,family=Virtual "
                       "Machine" % (uuid, uuid),
            "-no-user-config", "-nodefaults",
            "-rtc", "base=utc,driftfix=slew", "-no-shutdown",
            "-boot", "strict=on",
            "-netdev", "tap,id=hostnet0,ifname=tap%s" % uuid[:11],
            "-device", "virtio-net-pci,netdev=hostnet0,id=net0,mac=%s" % mac,
            "-msg", "timestamp=on",
            "-daemonize", "-pidfile", pidfile,
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise exception.NovaException(
                "vigil lab driver: %s for %s exited %d: %s"
                % (self._qemu, uuid, r.returncode, r.stderr.strip()))
        with open(pidfile) as f:
            rec["pid"] = int(f.read().strip())
        LOG.info("vigil lab driver: guest %s (%s) runs as pid %d",
                 rec["name"], uuid, rec["pid"], instance=instance)

    def _stop_qemu(self, rec, timeout=5.0):
        pid = rec.get("pid")
        if not _pid_is_guest(pid, rec["uuid"]):
            rec["pid"] = None
            return
        os.kill(pid, signal.SIGCONT)  # a paused guest must see the TERM
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_is_guest(pid, rec["uuid"]):
            if time.monotonic() > deadline:
                LOG.warning("vigil lab driver: pid %d (%s) ignored SIGTERM "
                            "for %.0f s, SIGKILL", pid, rec["uuid"], timeout)
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)
        rec["pid"] = None

    # ------------------------------------------------------------ nova API
    def init_host(self, host):
        super().init_host(host)
        os.makedirs(self._vm_dir, exist_ok=True)
        owned = set()
        for fn in sorted(os.listdir(self._vm_dir)):
            if not fn.endswith(".json"):
                continue
            rec = self._load(fn[:-5])
            if rec is None:
                continue
            uuid = rec["uuid"]
            if _pid_is_guest(rec.get("pid"), uuid):
                state = (power_state.PAUSED if _pid_stopped(rec["pid"])
                         else power_state.RUNNING)
                self._add_ips(rec["ips"])
                owned.update(rec["ips"])
                LOG.info("vigil lab driver: adopted running guest %s pid %d",
                         uuid, rec["pid"])
            else:
                # the node lost power (or qemu died): defined, not running
                state = power_state.SHUTDOWN
                was = rec.get("state")
                rec["pid"] = None
                rec["state"] = "shutdown"
                self._del_ips(rec["ips"])
                self._save(rec)
                LOG.info("vigil lab driver: guest %s is not running (%s): "
                         "SHUTDOWN", uuid, "it was shut off" if was == "shutdown"
                         else "its qemu is gone: the node lost power or qemu died")
            self.instances[uuid] = fake.FakeInstance(rec["name"], state, uuid)
            self.resources.claim(vcpus=rec["vcpus"], mem=rec["memory_mb"],
                                 disk=rec["root_gb"])
        self._flush_stray_ips(owned)

    def _flush_stray_ips(self, owned):
        """Remove /32s from the instance interface that no guest owns."""
        stray = self._dev_ips() - set(owned)
        if stray:
            LOG.info("vigil lab driver: removing stray %s from %s",
                     " ".join(sorted(stray)), self._dev)
            self._del_ips(stray)

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        failure = _take_spawn_failure(instance.uuid)
        if failure:
            mode, why = failure
            LOG.warning("%s", why, instance=instance)
            if mode == "claim":
                raise exception.ComputeResourcesUnavailable(reason=why)
            raise exception.NovaException(why)
        ips = self._ips_of(network_info)
        macs = [vif["address"] for vif in network_info or []]
        super().spawn(context, instance, image_meta, injected_files,
                      admin_password, allocations, network_info,
                      block_device_info, power_on, accel_info)
        old = self._load(instance.uuid)
        rec = {
            "uuid": instance.uuid, "name": instance.name,
            "vcpus": instance.flavor.vcpus,
            "memory_mb": instance.flavor.memory_mb,
            "root_gb": instance.flavor.root_gb,
            "ips": ips, "mac": macs[0] if macs else None,
            "pid": old.get("pid") if old else None,
            "state": "running" if power_on else "shutdown",
        }
        try:
            if old:
                self._stop_qemu(rec)
                self._del_ips([i for i in old.get("ips", []) if i not in ips])
            if power_on:
                self._start_qemu(instance, rec)
                self._add_ips(ips)
        except Exception:
            self._save(rec)
            super().destroy(context, instance, network_info)
            self._stop_qemu(rec)
            self._del_ips(ips)
            self._forget(instance.uuid)
            raise
        self._save(rec)

    def _rec_or_notfound(self, instance):
        rec = self._load(instance.uuid)
        if rec is None or instance.uuid not in self.instances:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        return rec

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        rec = self._load(instance.uuid)
        if rec is not None:
            self._stop_qemu(rec)
            self._del_ips(set(rec.get("ips", [])) |
                          set(self._ips_of(network_info)))
            self._forget(instance.uuid)
        super().destroy(context, instance, network_info, block_device_info,
                        destroy_disks, destroy_secrets)

    def power_off(self, instance, timeout=0, retry_interval=0):
        rec = self._rec_or_notfound(instance)
        self._stop_qemu(rec)
        self._del_ips(rec["ips"])
        rec["state"] = "shutdown"
        self._save(rec)
        super().power_off(instance, timeout, retry_interval)

    def power_on(self, context, instance, network_info,
                 block_device_info=None, accel_info=None, share_info=None):
        rec = self._rec_or_notfound(instance)
        ips = self._ips_of(network_info) or rec["ips"]
        if not _pid_is_guest(rec.get("pid"), rec["uuid"]):
            self._start_qemu(instance, rec)
        else:
            os.kill(rec["pid"], signal.SIGCONT)
        rec["ips"] = ips
        self._add_ips(ips)
        rec["state"] = "running"
        self._save(rec)
        super().power_on(context, instance, network_info, block_device_info,
                         accel_info, share_info)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None,
               accel_info=None, share_info=None):
        if instance.uuid not in self.instances:
            return super().reboot(context, instance, network_info,
                                  reboot_type, block_device_info,
                                  bad_volumes_callback, accel_info, share_info)
        rec = self._rec_or_notfound(instance)
        self._stop_qemu(rec)  # the guest resets: a new qemu process
        self.power_on(context, instance, network_info, block_device_info,
                      accel_info, share_info)

    def pause(self, instance):
        rec = self._rec_or_notfound(instance)
        if _pid_is_guest(rec.get("pid"), rec["uuid"]):
            os.kill(rec["pid"], signal.SIGSTOP)
        self.instances[instance.uuid].state = power_state.PAUSED

    def unpause(self, instance):
        rec = self._rec_or_notfound(instance)
        if _pid_is_guest(rec.get("pid"), rec["uuid"]):
            os.kill(rec["pid"], signal.SIGCONT)
        self.instances[instance.uuid].state = power_state.RUNNING

    def suspend(self, context, instance):
        self.pause(instance)
        self.instances[instance.uuid].state = power_state.SUSPENDED

    def resume(self, context, instance, network_info, block_device_info=None,
               share_info=None):
        self.unpause(instance)

    def get_info(self, instance, use_cache=True):
        info = super().get_info(instance, use_cache)
        if info.state in (power_state.RUNNING, power_state.PAUSED,
                          power_state.SUSPENDED):
            rec = self._load(instance.uuid)
            if rec is not None and not _pid_is_guest(rec.get("pid"),
                                                     rec["uuid"]):
                # qemu died under a running guest: a crashed domain
                LOG.warning("vigil lab driver: qemu of %s (pid %s) is gone: "
                            "SHUTDOWN", instance.uuid, rec.get("pid"))
                self._del_ips(rec["ips"])
                rec["pid"] = None
                rec["state"] = "shutdown"
                self._save(rec)
                self.instances[instance.uuid].state = power_state.SHUTDOWN
                return hardware.InstanceInfo(state=power_state.SHUTDOWN)
        return info
