"""Arms the lab's hang fault inside a lab node's nova-compute.

How it gets loaded: `lab up` puts one file, vigil_lab_hang_hook.pth, into the
lab venv's site-packages. Python runs a .pth file's `import` lines at start-up;
that line imports this module only when VIGIL_LAB_HANG_DIR is set, which only
the node supervisor does (it also puts this directory on PYTHONPATH). A
`sitecustomize` would not do: run-compute puts the cloud half's own
sitecustomize (pyshim/) first on PYTHONPATH, and only one is ever imported.

It does nothing unless the process is `nova-compute`. Then it installs a
handler for SIGRTMIN+5 that reads one block with O_DIRECT from the device
named in $VIGIL_LAB_HANG_DIR/device.

Why a signal handler: Python runs signal handlers in the main thread, and
nova-compute (eventlet) runs every green thread - RPC, the service heartbeat,
periodic tasks - on that one OS thread. A direct read on a loop device whose
backing file sits on a FUSE mount that stops answering puts that thread in
uninterruptible sleep (D, in submit_bio_wait), and with it all of nova-compute,
exactly as a hung disk freezes a real nova-compute; the process, its pid and
its command line are nova-compute's own. When the FUSE daemon answers again
the read returns and nova-compute carries on.
"""

import os
import sys


def _is_nova_compute():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a) == b"nova-compute" for a in argv[:2])


def _arm(hang_dir):
    import mmap
    import signal

    def block_on_disk(_signum, _frame):
        try:
            with open(os.path.join(hang_dir, "device")) as f:
                device = f.read().strip()
            with open(os.path.join(hang_dir, "offset")) as f:
                offset = int(f.read().strip())
            fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
            try:
                buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
                with open(os.path.join(hang_dir, "hook.blocking"), "w") as f:
                    f.write("%d %s %d\n" % (os.getpid(), device, offset))
                os.preadv(fd, [buf], offset)
            finally:
                os.close(fd)
        except Exception as e:  # never break nova-compute over a lab hook
            sys.stderr.write("vigil-lab hang hook: %r\n" % (e,))
        finally:
            try:
                os.unlink(os.path.join(hang_dir, "hook.blocking"))
            except OSError:
                pass

    signal.signal(signal.SIGRTMIN + 5, block_on_disk)
    with open(os.path.join(hang_dir, "hook.pid"), "w") as f:
        f.write("%d\n" % os.getpid())


_dir = os.environ.get("VIGIL_LAB_HANG_DIR")
if _dir and _is_nova_compute():
    try:
        _arm(_dir)
    except Exception as _e:
        sys.stderr.write("vigil-lab hang hook not armed: %r\n" % (_e,))
