"""Ctrl-C before a command's main() runs: one line, not a traceback. Standard library only,
so that it is in place before torch loads."""
import sys


def quiet_ctrl_c(module="__main__"):
    """Ctrl-C while a command still imports torch (seconds, longer on a cold disk) ends it
    with one line instead of importlib's thirty; Python still exits as SIGINT does (130 in
    a shell). Every other uncaught exception is printed as Python prints it. A command's
    own handlers (main's `except KeyboardInterrupt`) come first once main() runs. module:
    the caller's __name__: only a command run as one changes the hook, not one imported."""
    if module != "__main__":
        return
    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("stopped (Ctrl-C) before anything started", file=sys.stderr)
        else:
            sys.__excepthook__(kind, value, tb)
    sys.excepthook = hook
