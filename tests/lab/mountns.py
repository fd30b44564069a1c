"""A private mount namespace for tests that need real filesystem faults (tests/test_faults.py).

Mounts made for a test (a tiny tmpfs that fills up, a read-only bind mount, two tmpfs that
are different filesystems) must never reach the host.  The pytest process cannot unshare
its own mount namespace once threads run (unshare(CLONE_NEWNS) fails with EINVAL in a
multi-threaded process, and other test modules start server threads), so a holder process
does it: `unshare --mount --propagation private sleep infinity`.  Commands run inside with
`nsenter --target PID --mount` (ns.wrapper is that argv prefix, for run_acmebot's wrapper=),
and the test reads what is on disk there through /proc/PID/root (ns.path(p)).  close()
unmounts everything and ends the holder by its PID; the namespace dies with it.
"""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from lab import LabError, _die_with_parent


class MountNamespace:
    def __init__(self):
        self.mounts = []
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        own = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 30
        # mount nothing before the holder is in a namespace of its own
        while True:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{self.process.pid}/ns/mnt") != own:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise LabError(f"unshare --mount did not give a private mount namespace "
                               f"(status {self.process.returncode})")
            time.sleep(0.01)

    @property
    def wrapper(self):
        return ["nsenter", f"--target={self.process.pid}", "--mount", "--"]

    def run(self, *argv):
        """Runs argv inside the namespace; raises LabError when it fails."""
        result = subprocess.run([*self.wrapper, *map(str, argv)], capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"{' '.join(map(str, argv))} (in the test mount namespace) failed: "
                           f"{result.stdout}{result.stderr}")
        return result

    def path(self, path):
        """`path` as the namespace sees it, for this process to read and write."""
        return Path(f"/proc/{self.process.pid}/root{Path(path).resolve()}")

    def mount_tmpfs(self, path, size):
        """A tmpfs of `size` (e.g. '200k') at path (created if missing)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
        self.mounts.append(str(path))

    def bind_readonly(self, path):
        """path, bound onto itself read-only: every write below it fails with EROFS."""
        self.run("mount", "--bind", path, path)
        self.mounts.append(str(path))
        self.run("mount", "-o", "remount,bind,ro", path)

    def umount(self, path):
        self.run("umount", path)
        self.mounts.remove(str(path))

    def close(self):
        for path in reversed(self.mounts):
            with contextlib.suppress(LabError):
                self.umount(path)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
