"""How a run ends when it cannot finish: signals, crashes, and the one line the user reads.

A signal (Ctrl-C, a preempted machine) stops training after the current step and saves.
A crash that is not the user's fault (a data-loading worker killed for memory, CUDA out
of memory, a peer of a torchrun job gone, a bug) ends the process at once, with one line
that says what happened, what was saved and what to do; the full traceback goes to
crash.log in the output folder (`--debug` prints it too). Exit status 1.

train.py raises StepFailed from inside the loop, with the position of the last completed
step when the state is intact, and turns it into Crashed once it has saved what it can.
"""
import contextlib
import os
import re
import signal
import sys
import threading
import time
import traceback

import torch


MAX_NONFINITE = 20  # consecutive steps with a non-finite loss before a run gives up


class Diverged(Exception):
    """The loss stayed non-finite: training cannot recover by itself."""


def check_finite(longest, epoch, step):
    if longest >= MAX_NONFINITE:
        raise Diverged(f"the loss was not finite for {MAX_NONFINITE} steps in a row "
                       f"(noticed at epoch {epoch}, step {step}); lower --max-lr or check the data")


class Stopped(Exception):
    """SIGINT/SIGTERM: the run saved where it stood and exits with 128 + signal number."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class GracefulStop:
    """First SIGINT/SIGTERM: finish the current step, save, exit. A second one: exit now
    (every file is written atomically, so stopping anywhere corrupts nothing)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals need it
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving after this step "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_at_once(message):
    """SIGINT/SIGTERM end the work inside at once as Stopped(signum, message): for work
    with nothing to save (the range test writes its files at the end)."""
    def stop(signum, frame):
        raise Stopped(signum, message)
    main = threading.current_thread() is threading.main_thread()  # signals need it
    previous = {s: signal.signal(s, stop) for s in GracefulStop.SIGNALS} if main else {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_held(message):
    """SIGINT/SIGTERM held back while the block runs (files moved into place: a few
    renames that must all happen or none), then Stopped(signum, message) once it is done,
    so the stop is said truly: the block had finished."""
    if threading.current_thread() is not threading.main_thread():  # signals need it
        yield
        return
    got = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum))
                for s in GracefulStop.SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if got:
        raise Stopped(got[0], message)


class StateLost(Exception):
    """A failure while a step was changing weights, momentum, loss scale or schedule: the
    state is then none the run ever had between two steps, so it must not be saved."""


@contextlib.contextmanager
def changing_state():
    """Marks code that changes the run's state: a failure inside becomes StateLost."""
    try:
        yield
    except Exception as e:
        raise StateLost(f"{type(e).__name__}: {e}") from e


class StepFailed(Exception):
    """Training failed. progress: where the run stood after its last completed step (the
    state is that step's), or None when the state may be half-updated or, under torchrun,
    the ranks cannot agree on it. phase: "training" or "evaluation"."""

    def __init__(self, cause, progress, phase="training"):
        super().__init__(str(cause))
        self.cause, self.progress, self.phase = cause, progress, phase


class Crashed(Exception):
    """A crash after which train.py kept what it could: the message is the user's line."""

    def __init__(self, cause, message, out_dir):
        super().__init__(message)
        self.cause, self.out_dir = cause, out_dir


# -----------------------------------------------------------------------------
# Words for a failure

def _memory_of(device):
    """A device's total memory in GiB (the machine's RAM for the CPU), or None."""
    try:
        if device is not None and torch.device(device).type == "cuda":
            return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, RuntimeError, AssertionError):
        return None


def _last_line(text):
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _peers_timeout(text):
    """For a collective that gave up waiting: ' (after N s)', or '' where gloo does not say
    how long (a second operation on the closed connection). None for other errors."""
    found = (re.search(r"Timed out waiting (\d+)\s?ms for \w+ operation", text)  # gloo
             or re.search(r"collective operation timeout.*?Timeout\(ms\)=(\d+)", text, re.S))
    if found:
        return f" (after {int(found.group(1)) / 1000:.0f} s)"
    return "" if "Application timeout caused pair closure" in text else None


def describe(exc, device=None, batch_size=None, eval_batch_size=None, phase=None):
    """(what happened, what to try or None) for an unexpected exception.

    device, the batch sizes and phase ("training", "evaluation", or anything else) make
    the advice on running out of memory concrete."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        gib = _memory_of(device)
        where = f"{device} ({gib:.1f} GiB)" if gib else str(device or "the device")
        if phase == "evaluation":
            return (f"out of memory on {where} while evaluating batches of {eval_batch_size}",
                    f"add --eval-batch-size {max(1, (eval_batch_size or 2) // 2)}")
        if phase == "training":
            return (f"out of memory on {where} at batch size {batch_size}",
                    "close other programs using that memory; a new run can take a smaller "
                    "--batch-size (scale --max-lr with it), a resumed run keeps its batch size")
        return f"out of memory on {where}", "close other programs using that memory"
    if "DataLoader worker" in text and ("killed by signal" in text or "exited unexpectedly" in text):
        return ("a data-loading worker was killed (out of memory?)",
                "fewer workers use less memory: add --num-workers 1")
    if "in DataLoader worker process" in text:  # the worker's own exception, re-raised here
        return f"a data-loading worker failed: {_last_line(text)}", "check the data files"
    waited = _peers_timeout(text)
    if waited is not None:
        return (f"the other processes of the torchrun job stopped answering{waited}: one of "
                f"them hung, or its machine or network is gone",
                "the other machines' output says which")
    if isinstance(exc, getattr(torch.distributed, "DistError", ())) or "closed by peer" in text:
        return ("another process of the torchrun job failed or lost its connection",
                "its own error line says why")
    return f"{type(exc).__name__}: {_last_line(text) or 'no message'}", None


def write_crash_log(exc, out_dir, message):
    """Append the traceback to <out_dir>/crash.log (crash_rank<N>.log on other ranks).
    Returns its path, or None when it cannot be written (the line still reaches the user)."""
    rank = int(os.environ.get("RANK", "0"))
    path = os.path.join(out_dir or ".", "crash.log" if rank == 0 else f"crash_rank{rank}.log")
    try:
        os.makedirs(out_dir or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} | {' '.join(sys.argv)}\n"
                    f"{message}\n\n{''.join(traceback.format_exception(exc))}\n")
    except OSError:
        return None
    return path


def report(exc, message, out_dir, prefix="error:", debug=False):
    """The user's one line on stderr (and the traceback into crash.log). Returns 1."""
    path = write_crash_log(exc, out_dir, message)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    where = f"; traceback in {path}" if path else ""
    print(f"{prefix} {message}{where}", file=sys.stderr, flush=True)
    return 1


def one_line(exc, **context):
    """describe() as one phrase: 'what happened (what to try)'."""
    what, hint = describe(exc, **context)
    return f"{what} ({hint})" if hint else what
