"""Run train.py with one injected fault, for the resilience tests.

    python tests/faulty_run.py FAULT [train.py flags...]

FAULT is one of
    step:N:SIG     send SIG (KILL, INT, TERM) to this process after the N-th training step
    step:N:SIG:R   the same, under torchrun in the process of rank R only
    write:N        die (SIGKILL) half-way through writing the N-th checkpoint file
    rename:N       die (SIGKILL) after writing the N-th checkpoint file, before renaming it
    full:N         the N-th checkpoint write fails half-way: no space left on the device
    nan:N          from the N-th training step on, feed NaN images (the loss goes non-finite)
    none           no fault
Steps and checkpoint writes are counted from this process's start.
"""
import errno
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import model  # noqa: E402
import train  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def inject(fault):
    kind, *args = fault.split(":")
    calls = {"n": 0}
    if kind == "step" and len(args) > 2 and os.environ.get("RANK", "0") != args[2]:
        return  # another rank's fault
    if kind in ("step", "nan"):
        real_step = train.train_step

        def step(model_, x, *rest):
            calls["n"] += 1
            if kind == "nan" and calls["n"] >= int(args[0]):
                x = x * float("nan")
            out = real_step(model_, x, *rest)
            if kind == "step" and calls["n"] == int(args[0]):
                os.kill(os.getpid(), getattr(signal, "SIG" + args[1]))
            return out
        train.train_step = step
    elif kind in ("write", "rename", "full"):
        real_save = torch.save

        def save(obj, path, *a, **kw):
            real_save(obj, path, *a, **kw)
            calls["n"] += 1
            if kind == "full" and calls["n"] == int(args[0]):
                os.truncate(path, os.path.getsize(path) // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            if calls["n"] == int(args[0]):
                if kind == "write":  # leave a half-written temporary file behind
                    os.truncate(path, os.path.getsize(path) // 2)
                die()
        model.torch.save = save


if __name__ == "__main__":
    if sys.argv[1] != "none":
        inject(sys.argv[1])
    sys.exit(train.main(sys.argv[2:]))
