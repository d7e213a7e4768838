"""One run per output folder: a training run holds a lock on its --out-dir while it trains,
evaluates and writes its outputs, so a second train.py started on the same folder (a
notebook cell run in a second tab, a forgotten background job) refuses at once instead of
writing the same checkpoints and log as the first.

The lock is the kernel's, on checkpoints/run.lock (flock on Linux and macOS, a byte-range
lock through msvcrt on Windows, chosen when a run takes it, so that importing this module
needs neither): it goes with the process, so a run killed with SIGKILL or crashed leaves
no stale lock behind. The file itself stays, holding the last holder's pid, host and start
time for the refusal to name; it is never deleted, as deleting a lock file lets two runs
lock two different files. Reading commands (--evaluate, --metrics-from-ckpt,
gradcam_utils.py) take no lock: the checkpoints they read are replaced atomically.
"""
import contextlib
import errno
import json
import os
import socket
import sys
import time

from .config import UserError

LOCK_NAME = "run.lock"
# what the lock raises when another process holds it: flock's EWOULDBLOCK (EAGAIN),
# msvcrt's EACCES or EDEADLOCK
HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK}
# what flock raises where the file system has no locks (some network mounts)
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# Windows locks byte ranges, and a locked range cannot be read by others: lock one byte far
# past the holder's details, so that a refused run can still read who holds the folder.
WINDOWS_BYTE = 2**20


def _lock_file(f, unlock=False):
    """Lock f, or with unlock release it, at once (never waiting; OSError if held): flock
    where the OS has it, else (Windows) msvcrt's lock on one byte."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        f.seek(WINDOWS_BYTE)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK if unlock else msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f, fcntl.LOCK_UN if unlock else fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def holding_out_dir(out_dir, warn=lambda line: print(line, file=sys.stderr)):
    """Hold the lock on out_dir for the body; raise UserError at once if another run holds
    it. Where locks are not supported, warn once and carry on without one."""
    path = os.path.join(out_dir, "checkpoints", LOCK_NAME)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:  # a+: never truncate the holder's details before locking
        locked = _lock(f, out_dir, warn)
        if locked:
            f.seek(0)
            f.truncate()
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M")}, f)
            f.flush()
        try:
            yield
        finally:
            if locked:
                _lock_file(f, unlock=True)


def _lock(f, out_dir, warn):
    """True once locked; False where the file system cannot lock (said once)."""
    try:
        _lock_file(f)
        return True
    except OSError as e:
        if e.errno in HELD:
            raise UserError(f"{out_dir} is in use by another run ({_holder(f)}); wait for it, "
                            f"stop it, or use another --out-dir") from None
        if e.errno not in UNSUPPORTED:
            raise
        warn(f"warning: {out_dir}: this file system does not support locks ({e.strerror}), "
             f"so nothing stops a second run on the same folder")
        return False


def _holder(f):
    """'pid 1234 on host h, started 2026-12-01 12:03', as far as the holder wrote it."""
    f.seek(0)
    try:
        who = json.loads(f.read())
        return f"pid {who['pid']} on host {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "its pid not yet written"
