"""A script for test_zygote: says who it is, then does what its first argument asks
(`exit:N`, `signal:NAME` sent to itself, `wait` until a signal ends it, `raise`, `ctrl_c`
unhandled after unflushed output, `undecodable`: print a file name that is not UTF-8)."""
import atexit
import json
import os
import signal
import sys
import time

print(json.dumps({"pid": os.getpid(), "argv": sys.argv, "cwd": os.getcwd(),
                  "env": os.environ.get("PROBE"), "path0": sys.path[0],
                  "torch": "torch" in sys.modules, "hash": hash("seed")}), flush=True)
print("to stderr", file=sys.stderr)
what, _, arg = sys.argv[1].partition(":")
if what == "exit":
    sys.exit(int(arg))
if what == "signal":
    os.kill(os.getpid(), getattr(signal, "SIG" + arg))
    time.sleep(5)
if what == "wait":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    time.sleep(60)
if what == "raise":
    raise RuntimeError("as asked")
if what == "ctrl_c":
    atexit.register(lambda: print("atexit ran"))
    print("progress so far")  # (still in the buffer: stdout is a pipe)
    raise KeyboardInterrupt
if what == "undecodable":
    print(os.fsdecode(b"caf\xe9.png"))
