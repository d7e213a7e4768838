"""Run train.py with one injected fault, for the resilience tests.

    python tests/faulty_run.py FAULT [train.py flags...]

FAULT is one of
    step:N:SIG     send SIG (KILL, INT, TERM) to this process after the N-th training step
    step:N:SIG:R   the same, under torchrun in the process of rank R only
    hang:N:R       under torchrun, the process of rank R stops answering after the N-th
                   step (sleeps; SIGTERM ends it), as a hung rank or a lost machine
    micro:N        SIGKILL this process after the N-th micro-batch's backward pass
                   (--accum-steps: between two micro-batches of a step)
    write:N        die (SIGKILL) half-way through writing the N-th checkpoint file
    rename:N       die (SIGKILL) after writing the N-th checkpoint file, before renaming it
    full:N         the N-th checkpoint write fails half-way: no space left on the device
    nan:N          from the N-th training step on, feed NaN images (the loss goes non-finite)
    worker:N[:R]   SIGKILL a training DataLoader worker before the N-th step (rank R only),
                   as the out-of-memory killer would
    image:I        the data set raises on training image I (in the worker that loads it)
    oom:PLACE:N    torch.OutOfMemoryError in the N-th call of PLACE: forward or backward
                   (training steps, inside the network), eval (an evaluation batch),
                   collect (a whole evaluation, as --evaluate runs it)
    raise:N        a RuntimeError inside the network's forward pass of the N-th step
    update:N       a RuntimeError in the N-th step after the optimizer changed the weights
    none           no fault
In the tests' own process, `with injected(FAULT): train.main(...)` installs a fault for one
run (conftest.train_here), except those that end the process (ENDS_THE_PROCESS).
Steps and checkpoint writes are counted from this process's start; FAULTY_ONCE=PATH
makes a step fault fire once (see once()); PEERS_GONE_S=S shortens how long a rank waits
for its torchrun peers (runtime.PEERS_GONE_S).
"""
import contextlib
import errno
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from machinery import data, evaluation  # noqa: E402
import train  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def raiser(error):
    def fail(*_):
        raise error
    return fail


def inject_in_network(place, n, error, patch):
    """Raise `error` in the n-th training forward (or backward) pass or evaluation batch,
    half-way through the network: the BatchNorm layers before it have run already."""
    real_build = train.build_run
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training == (place == "eval"):
            return
        calls["n"] += 1
        if calls["n"] != n:
            return
        if place == "backward":
            output.register_hook(raiser(error))
        else:
            raise error

    def build_run(*a, **kw):
        run = real_build(*a, **kw)
        run.net.layer2.register_forward_hook(hook)
        return run
    patch(train, "build_run", build_run)


def kill_a_worker_before_step(n, patch):
    """SIGKILL one training worker before the n-th step; the DataLoader reports it (its
    SIGCHLD handler raises) while this waits, before the step starts."""
    real_make, real_step = data.make_loaders, train.train_step
    loaders, calls = [], {"n": 0}

    def make_loaders(*a, **kw):
        loaders[:] = real_make(*a, **kw)
        return loaders

    def step(*a):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(loaders[0]._iterator._workers[0].pid, signal.SIGKILL)
            if os.environ.get("FAULT_STAMP"):  # when, for a test that times the detection
                with open(os.environ["FAULT_STAMP"], "w") as f:
                    f.write(repr(time.time()))
            # the DataLoader's SIGCHLD handler raises here, before the step; if it did not,
            # the test timing the exit from the kill sees the wait
            time.sleep(30)
        return real_step(*a)
    patch(data, "make_loaders", make_loaders)
    patch(train, "train_step", step)


def fail_on_image(index, patch):
    real = data.CIFARDataset.__getitems__

    def getitems(self, items):
        if self.augment and any(i == index for _, i in items):  # (epoch, index) pairs
            raise ValueError(f"image {index} cannot be decoded (injected)")
        return real(self, items)
    patch(data.CIFARDataset, "__getitems__", getitems)


def fail_after_update(n, patch):
    real, calls = train.step_unless, {"n": 0}

    def step_unless(*a):
        real(*a)
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("failure after the weights changed (injected)")
    patch(train, "step_unless", step_unless)


def after_call(module, name, n, action, patch):
    """Run action() after the n-th call of module.name (counted from this process's start)."""
    real, calls = getattr(module, name), {"n": 0}

    def wrapper(*a):
        out = real(*a)
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return out
    patch(module, name, wrapper)


def hang():
    """Stop answering, as a hung rank or a machine gone silent; SIGTERM still ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(3600)


def inject(fault, patch=setattr):
    """Install `fault`, replacing what it needs through patch(object, name, value)."""
    kind, *args = fault.split(":")
    calls = {"n": 0}
    rank_arg = {"step": 2, "worker": 1, "hang": 1}.get(kind)
    if rank_arg is not None and len(args) > rank_arg and os.environ.get("RANK", "0") != args[rank_arg]:
        return  # another rank's fault
    if kind == "worker":
        return kill_a_worker_before_step(int(args[0]), patch)
    if kind == "image":
        return fail_on_image(int(args[0]), patch)
    if kind == "oom" and args[0] == "collect":
        return patch(evaluation, "collect_logits", raiser(OOM))
    if kind == "oom":
        return inject_in_network(args[0], int(args[1]), OOM, patch)
    if kind == "raise":
        return inject_in_network("forward", int(args[0]), RuntimeError("a bug (injected)"), patch)
    if kind == "update":
        return fail_after_update(int(args[0]), patch)
    if kind == "micro":
        return after_call(train, "micro_step", int(args[0]), die, patch)
    if kind == "hang":
        return after_call(train, "train_step", int(args[0]), hang, patch)
    if kind in ("step", "nan"):
        real_step = train.train_step

        def step(model_, x, *rest):
            calls["n"] += 1
            if kind == "nan" and calls["n"] >= int(args[0]):
                x = x * float("nan")
            out = real_step(model_, x, *rest)
            if kind == "step" and calls["n"] == int(args[0]) and once():
                os.kill(os.getpid(), getattr(signal, "SIG" + args[1]))
            return out
        patch(train, "train_step", step)
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
        patch(torch, "save", save)  # as checkpoint_files calls it


# Faults that end the process itself (a signal, SIGKILL, a hang): a real process only
ENDS_THE_PROCESS = ("step", "micro", "write", "rename", "hang")


@contextlib.contextmanager
def injected(fault):
    """`fault` installed in this process for the block, then undone: a run in the test's own
    process (train.main), seconds faster than starting one. Not for the faults that end
    the process (ENDS_THE_PROCESS): those need a process of their own (python faulty_run.py)."""
    if fault.split(":")[0] in ENDS_THE_PROCESS:
        raise ValueError(f"{fault} ends the process: run it as python tests/faulty_run.py")
    undo = []

    def patch(obj, name, value):
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)
    try:
        if fault != "none":
            inject(fault, patch)
        yield
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)


def once():
    """With FAULTY_ONCE=PATH the fault fires in one process only, the first to reach it
    (a restarted torchrun worker runs without it): PATH is created just before."""
    path = os.environ.get("FAULTY_ONCE")
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


if __name__ == "__main__":
    if os.environ.get("PEERS_GONE_S"):
        from machinery import runtime
        runtime.PEERS_GONE_S = float(os.environ["PEERS_GONE_S"])
    if sys.argv[1] != "none":
        inject(sys.argv[1])
    sys.exit(train.main(sys.argv[2:]))
