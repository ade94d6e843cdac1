"""A FUSE filesystem with one file, `disk.img`, whose reads and writes stall
while a flag file exists: the lab's "failed disk backplane".

Runs in the lab venv (fusepy, over the system's libfuse2), in the foreground:
    python stalldisk.py MOUNTPOINT FLAGFILE [SIZE_MIB]

The lab puts a loop device on `MOUNTPOINT/disk.img`; a direct read of that
device then waits on this daemon, and while FLAGFILE exists the daemon does not
answer, so the reader sits in uninterruptible sleep (D) exactly as a process
does on a hung disk. Removing FLAGFILE releases every waiting request.

The mount uses `direct_io` so no read is ever served from the page cache: a
stall must reach the daemon every time, not only on the first read.
"""

import errno
import os
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy

IMG = "/disk.img"


class StallDisk(Operations):
    def __init__(self, flag, size):
        self.flag = flag
        self.size = size
        # Sparse in memory: only blocks ever written take space.
        self.blocks = {}
        self.lock = threading.Lock()
        self.now = time.time()

    def _stall(self):
        # Poll the flag: the daemon keeps no other state about the fault, so
        # a crashed `lab` or a plain `rm FLAGFILE` always releases the disk.
        while os.path.exists(self.flag):
            time.sleep(0.05)

    def getattr(self, path, fh=None):
        base = {"st_uid": 0, "st_gid": 0, "st_atime": self.now,
                "st_mtime": self.now, "st_ctime": self.now}
        if path == "/":
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == IMG:
            return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1,
                        st_size=self.size)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", IMG[1:]]

    def open(self, path, flags):
        if path != IMG:
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        self._stall()
        out = bytearray()
        end = min(offset + size, self.size)
        pos = offset
        with self.lock:
            while pos < end:
                blk, off = divmod(pos, 4096)
                n = min(4096 - off, end - pos)
                data = self.blocks.get(blk)
                out += data[off:off + n] if data else bytes(n)
                pos += n
        return bytes(out)

    def write(self, path, data, offset, fh):
        self._stall()
        if offset + len(data) > self.size:
            raise FuseOSError(errno.ENOSPC)
        pos = offset
        with self.lock:
            for i in range(0, len(data)):
                pass
            view = memoryview(data)
            while view:
                blk, off = divmod(pos, 4096)
                n = min(4096 - off, len(view))
                cur = bytearray(self.blocks.get(blk) or bytes(4096))
                cur[off:off + n] = view[:n]
                self.blocks[blk] = bytes(cur)
                view = view[n:]
                pos += n
        return len(data)

    def truncate(self, path, length, fh=None):
        raise FuseOSError(errno.EPERM)

    def fsync(self, path, datasync, fh):
        self._stall()
        return 0

    def flush(self, path, fh):
        return 0


def main():
    mnt, flag = sys.argv[1], sys.argv[2]
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    FUSE(StallDisk(flag, size << 20), mnt, foreground=True, nothreads=False,
         direct_io=True, allow_other=False, fsname="vigil-lab-stalldisk")


if __name__ == "__main__":
    main()
