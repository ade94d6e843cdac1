#!/usr/bin/env python3
"""Node supervisor: the "machine" a lab node's BMC powers on.

    supervisor.py computeN        (ipmi_sim's startcmd; see bmc.py)

Power on (this process starting):
  1. wait until the previous boot's reaper has finished (power.lock);
  2. write a fresh boot id to state/nodes/computeN/boot_id;
  3. fork the *reaper* (host side, own session, outside the node's cgroup),
     which holds power.lock and waits for this process to end;
  4. join the node's cgroup v2 group and network namespace, bring the links up;
  5. start nova-compute (`tests/lab/cloud/run-compute computeN`) and, if the
     node is configured for it (sensor.enabled), `vigil-sensor run ...`;
  6. supervise: log exits, never restart on its own (a killed nova-compute must
     stay dead so Vigil can see it); `lab` asks for restarts (supervisor.cmd +
     SIGUSR1).
Power off:
  - SIGTERM (ipmi_sim `chassis power off`) or SIGKILL (`lab fault power-off`,
    Redfish ForceOff: cgroup.kill) = power loss: cgroup.kill on the node's
    group, which takes this process with it;
  - SIGUSR2 (Redfish GracefulShutdown) = orderly: SIGTERM to the node's
    processes, SIGKILL after a grace period;
  either way the reaper then kills what is left in the cgroup, takes the links
  down, removes the guests' addresses and marks the node off.
"""

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import labcommon as lc
import net
import sdunit

GRACE_S = 15.0


def say(msg):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


def sensor_knows(binary, flag):
    """True if `binary run --help` mentions flag (see the probe's caller)."""
    try:
        p = subprocess.run([binary, "run", "--help"], capture_output=True, text=True,
                           timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"cannot ask {binary} for its options ({e}); starting it without {flag}")
        return False
    return flag in p.stdout + p.stderr


class Supervisor:
    def __init__(self, node, boot_id):
        self.node = node
        self.boot_id = boot_id
        # name -> {"pid", "starttime", "started_at"} while running, or
        # {"exited": status, "at": t} after; mirrored into procs.json.
        self.procs = {}
        self.wake = False
        self.graceful = False

    # --- children ----------------------------------------------------------

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "LC_ALL", "HOME", "TERM", "RUST_LOG", "RUST_BACKTRACE")}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(
            VIGIL_LAB_DIR=str(lc.LAB_DIR),
            VIGIL_LAB_NODE=self.node.name,
            VIGIL_LAB_BOOT_ID=self.boot_id,
            # hang_hook/vigil_lab_hang_hook.py arms the hang fault inside
            # nova-compute's own interpreter (see faults.py, hang).
            VIGIL_LAB_HANG_DIR=str(self.node.hang),
            PYTHONPATH=str(lc.NODES_DIR / "hang_hook"),
            # The lab's decider listens on plain http:// on the lab bridge, so
            # the sensor must be told explicitly that its token may go there in
            # clear text (it refuses otherwise). An environment variable rather
            # than --allow-plaintext-token: sensors built before the flag
            # existed ignore it instead of refusing the command line.
            VIGIL_ALLOW_PLAINTEXT_TOKEN="true",
        )
        return env

    def spawn(self, what, argv, env=None):
        log_path = self.node.logs / f"{what}.out"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} boot {self.boot_id}: "
                         f"{' '.join(argv)}\n".encode())
            pid = os.posix_spawn(argv[0], argv, env or self.env(), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ])
        except OSError as e:
            say(f"cannot start {what} ({argv[0]}): {e}")
            self.procs[what] = {"error": f"cannot start {argv[0]}: {e}", "at": time.time()}
            self.save()
            return
        finally:
            os.close(fd)
        self.procs[what] = dict(lc.pid_record(pid, what), started_at=time.time(), log=str(log_path))
        say(f"started {what}: pid {pid}")
        self.save()

    def running(self, what):
        rec = self.procs.get(what)
        return bool(rec and rec.get("pid") and "exited" not in rec)

    def start(self, what):
        if self.running(what):
            return
        if what == "nova-compute":
            self.spawn(what, [str(lc.RUN_COMPUTE), self.node.name])
        elif what == "sensor":
            cfg = lc.lab_config()
            binary = cfg.get("sensor_bin") or os.environ.get("VIGIL_SENSOR_BIN")
            if not binary or not os.path.exists(binary):
                say(f"sensor wanted but no binary (sensor_bin in {lc.CONFIG_JSON} or "
                    f"VIGIL_SENSOR_BIN): {binary!r}")
                self.procs["sensor"] = {"error": f"sensor binary not found: {binary!r}",
                                        "at": time.time()}
                self.save()
                return
            n = self.node
            pkg = cfg.get("sensor_pkg")
            # Only while sensor_bin is the package's own: a labctl from before
            # packaged sensors rewrites sensor_bin and keeps sensor_pkg.
            if pkg and binary == str(Path(pkg["root"]) / "usr/bin/vigil-sensor"):
                self.start_packaged_sensor(pkg)
                return
            # Exactly the command line of CONTRACT.md ("Node"): one --decider
            # for the host's decider, one more per lab controller when
            # `lab controllers up` made some (read at each start: `controllers
            # up|down` restart the sensors to change the list).
            deciders = [a for url in lc.sensor_decider_urls() for a in ("--decider", url)]
            # TEMPORARY probe (issue 16): --system-uuid-file is being added to
            # vigil-sensor in parallel; pass it only to a sensor that knows it,
            # so older builds still start. To be removed when both are merged.
            identity = (["--system-uuid-file", str(n.product_uuid_path)]
                        if sensor_knows(binary, "--system-uuid-file") else [])
            self.spawn(what, [binary, "run", "--node", n.name, *deciders,
                              "--token-file", str(n.token_path), "--cgroup", n.cgroup_rel,
                              "--boot-id-path", str(n.boot_id_path), *identity])

    def start_packaged_sensor(self, pkg):
        """The sensor as the vigil-sensor package runs it: the unit's
        ExecStart= from the extracted package, its settings in the node's own
        /etc/vigil/sensor.env (the shipped file plus the lab's lines, as an
        operator edits it), the token as a credential. CONTRACT.md, "Node"."""
        n = self.node
        root = Path(pkg["root"])
        etc = n.state / "etc" / "vigil"
        etc.mkdir(parents=True, exist_ok=True)
        try:
            shipped = (root / "etc/vigil/sensor.env").read_text()
            token = n.token_path.read_bytes()
        except OSError as e:
            return self.failed("sensor", f"packaged sensor: {e}")
        lab_lines = [
            "", "# Set by the lab (tests/lab/CONTRACT.md, Node):",
            "VIGIL_DECIDERS=" + ",".join(lc.sensor_decider_urls()),
            # Lab-only settings: a lab node shares the host's kernel, /proc
            # and SMBIOS, so its sensor is scoped to the node's cgroup and
            # reads the node's own boot id and system UUID.
            f"VIGIL_CGROUP={n.cgroup_rel}",
            f"VIGIL_BOOT_ID_PATH={n.boot_id_path}",
            f"VIGIL_SYSTEM_UUID_FILE={n.product_uuid_path}",
            # The lab's decider URL is plain http:// on the lab bridge.
            "VIGIL_ALLOW_PLAINTEXT_TOKEN=true",
        ]
        (etc / "sensor.env").write_text(shipped.rstrip("\n") + "\n" + "\n".join(lab_lines) + "\n")
        token_dst = etc / "sensor.token"
        token_dst.write_bytes(token)
        os.chmod(token_dst, 0o600)
        try:
            cmd = sdunit.command(
                root / "usr/lib/systemd/system/vigil-sensor.service",
                maps=[("/usr/", f"{root}/usr/"), ("/etc/vigil/", f"{etc}/")],
                # A lab node has no host name of its own: %H is its name.
                host=n.name, creds=n.state / "credentials")
        except sdunit.UnitError as e:
            return self.failed("sensor", f"packaged sensor unit: {e}")
        # systemd's base environment; the unit's own settings on top.
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        env.update(cmd["env"])
        say(f"sensor from package {pkg.get('deb')}: ExecStart={cmd['exec_start']} "
            f"-> {' '.join(cmd['argv'])}")
        self.spawn("sensor", cmd["argv"], env=env)

    def failed(self, what, msg):
        say(msg)
        self.procs[what] = {"error": msg, "at": time.time()}
        self.save()

    def stop(self, what):
        rec = self.procs.get(what)
        if self.running(what) and lc.record_alive(rec):
            os.kill(rec["pid"], signal.SIGTERM)
            say(f"stopping {what} (pid {rec['pid']})")

    def save(self):
        lc.write_json(self.node.procs_json, dict(
            self.procs, boot_id=self.boot_id,
            supervisor=lc.pid_record(os.getpid(), "supervisor")))

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for what, rec in self.procs.items():
                if rec.get("pid") == pid and "exited" not in rec:
                    code = os.waitstatus_to_exitcode(status)
                    rec.update(exited=code, at=time.time())
                    say(f"{what} (pid {pid}) exited: "
                        + (f"signal {-code}" if code < 0 else f"status {code}"))
                    self.save()

    def commands(self):
        # Reap first: a `start` right after a kill would otherwise find the
        # dead process still recorded as running and be dropped (seen: kill
        # then heal left nova-compute down).
        self.reap()
        cmd_file = self.node.state / "supervisor.cmd"
        with lc.file_lock(self.node.state / ".supervisor.cmd.lock"):
            try:
                lines = cmd_file.read_text().splitlines()
                cmd_file.unlink()
            except FileNotFoundError:
                lines = []
        for line in lines:
            verb, _, what = line.partition(" ")
            if what not in ("nova-compute", "sensor"):
                say(f"ignoring request {line!r}")
            elif verb == "start":
                self.start(what)
            elif verb == "stop":
                self.stop(what)

    def shutdown_gracefully(self):
        say("graceful shutdown: SIGTERM to every process of the node")
        me = os.getpid()
        for pid in lc.cgroup_pids(self.node.cgroup):
            if pid != me:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + GRACE_S
        while time.monotonic() < end:
            self.reap()
            if [p for p in lc.cgroup_pids(self.node.cgroup) if p != me] == []:
                break
            time.sleep(0.1)
        say("graceful shutdown done; power off")
        # The reaper kills whatever ignored SIGTERM.
        os._exit(0)

    def run(self):
        def on_usr1(_s, _f):
            self.wake = True

        def on_usr2(_s, _f):
            self.graceful = True

        signal.signal(signal.SIGUSR1, on_usr1)
        signal.signal(signal.SIGUSR2, on_usr2)
        self.start("nova-compute")
        if self.node.sensor_flag.exists():
            self.start("sensor")
        while True:
            if self.graceful:
                self.shutdown_gracefully()
            if self.wake:
                self.wake = False
                self.commands()
            self.reap()
            time.sleep(0.2)


def power_loss(node):
    """SIGTERM from ipmi_sim: cut the power of the whole node, this process
    included (it is in the cgroup)."""
    (node.cgroup / "cgroup.kill").write_text("1")
    os._exit(0)  # not reached once the SIGKILL lands


def reaper(node, pipe_r, boot_id):
    """Runs on the host, outside the node's cgroup, holding power.lock: waits
    for the supervisor to end by any means, then finishes the power loss."""
    os.setsid()
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while os.read(pipe_r, 1):
        pass
    say(f"reaper: supervisor gone; power off (boot {boot_id})")
    import power  # noqa: E402  (only the reaper needs it)

    power.release_stall(node)
    try:
        n = net.kill_cgroup(node.cgroup)
        say(f"reaper: killed {n} process(es) still in {node.cgroup}")
    except lc.LabError as e:
        say(f"reaper: {e}")
    net.links(node, up=False)
    gone = net.flush_instance_addresses(node)
    try:
        for line in power.end_crash(node):
            say(f"reaper: {line}")
    except lc.LabError as e:
        say(f"reaper: {e}")
    if gone:
        say(f"reaper: removed guest addresses {' '.join(gone)} from inst0")
    lc.write_json(node.power_json, {"state": "off", "boot_id": boot_id, "since": time.time()})
    try:
        rec = lc.read_json(node.supervisor_pid)
        if rec and rec.get("boot_id") == boot_id:
            node.supervisor_pid.unlink()
    except OSError:
        pass
    procs = lc.read_json(node.procs_json, {}) or {}
    if procs.get("boot_id") == boot_id:
        node.procs_json.unlink(missing_ok=True)
    say("reaper: node is off")


def main():
    node = lc.Node(sys.argv[1])
    # ipmi_sim does not mark its own descriptors close-on-exec (its epoll fd
    # and wake-up pipe arrive here); the node must not hold them.
    os.closerange(3, 65536)
    node.logs.mkdir(parents=True, exist_ok=True)
    out = os.open(node.logs / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    say(f"power on {node.name}")

    lock = os.open(node.power_lock, os.O_RDWR | os.O_CREAT, 0o600)
    end = time.monotonic() + 60
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > end:
                say("previous boot's clean-up still holds power.lock after 60s; giving up")
                sys.exit(1)
            time.sleep(0.05)
    if not os.path.exists(f"/run/netns/{node.netns}") or not node.cgroup.is_dir():
        say(f"node not built (netns {node.netns} / cgroup {node.cgroup} missing); "
            "`lab up` makes them. Power stays off.")
        sys.exit(1)

    boot_id = str(uuid.uuid4())
    lc.write_atomic(node.boot_id_path, boot_id + "\n")
    pipe_r, pipe_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(pipe_w)
        try:
            reaper(node, pipe_r, boot_id)
        finally:
            os._exit(0)
    os.close(pipe_r)
    os.close(lock)  # the reaper's copy keeps the lock until it is done

    signal.signal(signal.SIGTERM, lambda _s, _f: power_loss(node))
    # A group left frozen (kdump, hard-hang) would stop this process as it
    # joins; the power-off clean-up thaws it, this is for one that did not.
    net.freeze_cgroup(node.cgroup, False)
    net.join_cgroup(node.cgroup)
    net.setns_net(node.netns)
    # Orphans of the node (the guests' daemonized qemu) are reparented here,
    # as on a real host they would be to its init, and reaped in reap().
    import ctypes
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    net.links(node, up=True)
    lc.write_json(node.supervisor_pid, dict(lc.pid_record(os.getpid(), "supervisor"),
                                            boot_id=boot_id, reaper=pid))
    lc.write_json(node.power_json, {"state": "on", "boot_id": boot_id, "since": time.time(),
                                    "supervisor": os.getpid(), "reaper": pid})
    say(f"{node.name} up: boot id {boot_id}, netns {node.netns}, cgroup {node.cgroup}")
    sup = Supervisor(node, boot_id)
    sup.procs["reaper"] = {"pid": pid, "host_side": True}
    sup.run()


if __name__ == "__main__":
    main()
