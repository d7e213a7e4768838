"""Ctrl-C before a command's main() runs: one line, not a traceback. Standard library only,
so that it is in place before torch loads."""
import os
import signal
import sys


def quiet_ctrl_c(module="__main__"):
    """Ctrl-C while a command still imports torch (seconds, longer on a cold disk) ends it
    with one line instead of importlib's thirty; Python still exits as SIGINT does (130 in
    a shell). Every other uncaught exception is printed as Python prints it. A command's
    own handlers (main's `except KeyboardInterrupt`) come first once main() runs. module:
    the caller's __name__: only a command run as one changes the hook, not one imported."""
    if module != "__main__":
        return
    seen = []

    def interrupted(signum, frame):  # as Python's own handler, and remembered: a Ctrl-C
        seen.append(signum)  # inside an extension's code can surface as its own error
        raise KeyboardInterrupt  # (pydantic-core's SchemaError while albumentations loads)

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt) or seen:
            print("stopped (Ctrl-C) before anything started", file=sys.stderr)
            if not issubclass(kind, KeyboardInterrupt):  # (exit as a Ctrl-C does: 130)
                sys.stderr.flush()
                os._exit(128 + signal.SIGINT)
        else:
            sys.__excepthook__(kind, value, tb)
    sys.excepthook = hook
    signal.signal(signal.SIGINT, interrupted)
