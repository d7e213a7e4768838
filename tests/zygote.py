"""A zygote for the Python processes the tests start. `import torch` and albumentations cost
about 6 s of CPU in every new Python, and the suite starts over a hundred of them
(train.py, sweep.py and its trials, predict.py, the ranks torchrun starts): that was half
the suite's time. So each pytest process keeps one server that has imported those
libraries once (serve), and a test's `python train.py ...` hands itself over to it at
startup (hand_over, from tests/hooks/sitecustomize.py): the server forks a copy that takes
the process's standard streams, folder, environment and arguments, and runs the script as
`python` would. The process the test started stays, as its stand-in: it passes on the
signals it gets, ends with the copy's exit status (or its signal), and the copy dies with
it if it is killed. What the test sees is the same: output, files, exit code, signals.

Only the repo's own scripts are handed over, with no Python options but `-u`. These run as
usual, the server told nothing: a process whose environment would change what the server
already imported (Python's own settings, locale, thread and library settings, a
PYTHONPATH with modules of its own), a torchrun rank with no server of its own (each
pytest process keeps two: ranks 0 and 1), and every process of a test marked
`fresh_python`.
Nothing of the project (machinery, model) is imported in the server, so each run imports
its own code as a fresh Python does.

Where a copy is not a fresh Python (a test that depends on these is `fresh_python`):
- its pid, parent, process group and session are its own, not its stand-in's; a signal to
  the stand-in's group reaches the copy, but not the copy's own children;
- it dies a few milliseconds after a SIGKILLed stand-in, not with it;
- SIGSTOP and SIGCONT stop the stand-in only;
- every copy of a server has the same string-hash seed, so two copies iterate a set of
  strings in the same order (which is why each rank has a server of its own: ranks must
  differ as they do on real machines);
- torch, albumentations and the rest are imported already: a test of what importing
  them costs or does needs a fresh Python."""
import importlib
import io
import json
import os
import signal
import socket
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRELOAD = ("numpy", "torch", "torchvision", "cv2", "albumentations", "matplotlib.figure",
           "matplotlib.pyplot", "PIL.Image", "optuna")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM)
# environment that the server's imports, or Python's own start, have read already: a process
# that sets these otherwise runs on its own (OMP_NUM_THREADS is applied in the copy, through
# torch.set_num_threads; the rest, LD_LIBRARY_PATH and KMP_* among them, as some libraries
# set them in os.environ at import, is the copy's own environment)
PYTHON_AT_START = {"PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONMALLOC",
                   "PYTHONOPTIMIZE", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUTF8",
                   "PYTHONDEVMODE", "PYTHONVERBOSE", "PYTHONHOME", "PYTHONUSERBASE",
                   "PYTHONINTMAXSTRDIGITS", "PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME",
                   "PYTHONINSPECT", "PYTHONPLATLIBDIR"}
SETTLED = ("LD_PRELOAD", "MKL_", "OPENBLAS", "MPL", "OPENCV", "PYTORCH_", "TORCH_LOGS", "TORCH_SHOW",
           "LANG", "LC_")


def _settled(env):
    return {k: v for k, v in env.items() if k.startswith(SETTLED) or k in PYTHON_AT_START}


def _own_paths(env):
    """PYTHONPATH but for the tests' own folders (the server's, the stand-ins' hooks)."""
    ours = (os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "hooks"))
    return tuple(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in ours)


def _server_for(env):
    """The socket of the server for this process: TEST_ZYGOTE names one per rank a job may
    have (rank r takes the r-th, a process that is no rank the first), since every copy of
    a server has its string-hash seed and ranks on real machines differ in theirs. None:
    run as usual (no server, or more ranks than servers)."""
    servers = [w for w in env.get("TEST_ZYGOTE", "").split(os.pathsep) if w]
    rank = env.get("RANK", "0")
    return servers[int(rank)] if rank.isdigit() and int(rank) < len(servers) else None


COPY = False  # True in a copy the server forked


# -- the stand-in: in the process the test started ------------------------------------

def hand_over():
    """If this process runs one of the repo's scripts and the server takes it, wait for its
    copy and end as it ends (never returns). Otherwise return, and Python goes on as usual."""
    where = _server_for(os.environ)
    if COPY:  # (a copy's own sitecustomize ran in the server, long ago)
        return
    argv, orig = sys.argv, getattr(sys, "orig_argv", [])
    if not where or not argv or not argv[0].endswith(".py") or len(orig) < len(argv) + 1:
        return
    options = orig[1:len(orig) - len(argv)]
    script = os.path.realpath(argv[0])
    if any(o != "-u" for o in options) or not script.startswith(ROOT + os.sep) \
            or not os.path.isfile(script):
        return
    ignored = [s for s in FORWARDED if signal.getsignal(s) == signal.SIG_IGN]
    pending, pid = [], [None]

    def forward(signum, frame):
        if pid[0] is None:
            pending.append(signum)
        else:
            try:
                os.kill(pid[0], signum)
            except ProcessLookupError:  # (it has just ended: its status is on its way)
                pass
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(where)
        life_r, life_w = os.pipe()  # the copy dies when the write end closes: when this does
        request = json.dumps({"argv": argv, "orig_argv": orig, "cwd": os.getcwd(),
                              "env": dict(os.environ), "path": sys.path, "ignored": ignored,
                              "unbuffered": "-u" in options}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2, life_r])
        os.close(life_r)
    except OSError:  # no server (yet), or a closed standard stream: run as usual
        return
    for s in FORWARDED:
        if s not in ignored:
            signal.signal(s, forward)
    reader = conn.makefile("r")
    first = json.loads(reader.readline() or '{"refused": "server gone"}')
    if "refused" in first:
        for s in FORWARDED:
            if s not in ignored:
                signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        os.close(life_w)
        for s in pending:
            os.kill(os.getpid(), s)
        return
    code = -signal.SIGKILL  # (what a stand-in whose server was killed ends with)
    try:  # from here on this process runs nothing of its own: the copy runs the script
        pid[0] = first["pid"]
        for s in pending:
            forward(s, None)
        line = reader.readline()
        code = json.loads(line)["code"] if line else code
        if code < 0:
            if -code not in (signal.SIGKILL, signal.SIGSTOP):  # (those have no handler to reset)
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
    finally:
        os._exit(code if code >= 0 else 128 - code)


# -- the server: one per pytest process -----------------------------------------------

def serve(where):
    """Import the heavy libraries, then fork a copy for each process that hands itself over."""
    import selectors
    mine = _settled(os.environ)  # (as it started: some of the imports set more)
    mine["(paths)"] = _own_paths(os.environ)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # (as machinery.data does)
    for name in PRELOAD:
        importlib.import_module(name)
    _die_with_parent(signal.SIGTERM)
    # A signal to the pytest process's group is not for the server: held back, not ignored,
    # so that one forwarded to a copy before it has set its handlers waits for them
    # (a child inherits the mask, and _become lifts it).
    signal.pthread_sigmask(signal.SIG_BLOCK, [s for s in FORWARDED if s != signal.SIGTERM])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(where + ".new")
    listener.listen(64)
    os.rename(where + ".new", where)  # (ready: a process that finds the name can connect)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting = {}  # pid -> the connection its stand-in waits on
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                try:
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        pid = _take(conn, mine, waiting, lambda: (listener.close(), sel.close(),
                                                                   os.close(wake_r), os.close(wake_w)))
                        if pid:
                            sel.register(conn, selectors.EVENT_READ, pid)
                    elif key.fileobj is wake_r:
                        os.read(wake_r, 4096)
                        for conn in _reap(waiting):
                            sel.unregister(conn)
                            conn.close()
                    else:  # a stand-in's end closed: it was killed, and its copy goes too
                        sel.unregister(key.fileobj)
                        _kill(key.data)
                except Exception:  # (logged; the processes to come still find it)
                    import traceback
                    traceback.print_exc()
                    sys.stdout.flush()


def _take(conn, mine, waiting, close_server):
    try:
        conn.settimeout(10)
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 4)
        size = struct.unpack("!I", data[:4])[0]
        while len(data) < 4 + size:
            more = conn.recv(1 << 20)
            if not more:
                raise OSError("the stand-in went away")
            data += more
        request = json.loads(data[4:4 + size])
        why = _refusal(request, mine)
        if why or len(fds) != 4:
            print(f"{request['argv'][0]} runs on its own: {why or 'no streams'}", flush=True)
            conn.sendall(json.dumps({"refused": why or "no streams"}).encode() + b"\n")
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        conn.settimeout(None)
        pid = os.fork()
    except Exception:  # (a stand-in that went away mid-request: nothing to serve)
        conn.close()
        return
    if pid == 0:
        try:
            for other in waiting.values():
                other.close()
            close_server()
            conn.close()
            _become(request, fds)
        finally:
            os._exit(70)  # (_become never returns; an error in setting up must not serve)
    for fd in fds:
        os.close(fd)
    waiting[pid] = conn
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass
    return pid


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _refusal(request, mine):
    env = request["env"]
    theirs = _settled(env)
    theirs["(paths)"] = _own_paths(env)
    if theirs != mine:
        return "settings the server's imports read: " + ", ".join(sorted(
            {k for k, _ in set(theirs.items()) ^ set(mine.items())}))
    if "OMP_NUM_THREADS" in os.environ and "OMP_NUM_THREADS" not in env:
        return "OMP_NUM_THREADS"
    return None


def _reap(waiting):
    """The connections of the copies that ended, each told its exit code."""
    ended = []
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        conn = waiting.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass
            ended.append(conn)
    return ended


def _become(request, fds):
    """In the fork: become `python [-u] SCRIPT ARGS` as the stand-in was started. Never returns."""
    import random
    import threading
    global COPY
    COPY = True
    os.setsid()  # (signals reach it through its stand-in, not through the server's group)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    threading.Thread(target=_die_with, args=(fds[3],), daemon=True).start()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import tempfile
    tempfile.tempdir = None  # (found again from TMPDIR, as a new Python does)
    argv = request["argv"]
    sys.argv, sys.orig_argv = argv, request["orig_argv"]
    sys.path[:] = [os.path.dirname(os.path.realpath(argv[0]))] + request["path"]
    unbuffered = request["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED"))
    encoding, errors = sys.__stdout__.encoding, sys.__stdout__.errors  # (the server's: same locale)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding=encoding,
                                                 errors=errors)
    sys.stdout = sys.__stdout__ = _text(1, unbuffered, encoding, errors, False)
    sys.stderr = sys.__stderr__ = _text(2, unbuffered, encoding, "backslashreplace", True)
    if os.environ.get("QUICK_PICTURES"):  # (what tests/hooks/sitecustomize.py does in a new Python)
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import quick_pictures
        quick_pictures.install()
        sys.path.pop(0)
    if os.environ.get("PYTHONFAULTHANDLER"):
        import faulthandler
        faulthandler.enable()
    import numpy
    import torch
    random.seed()
    numpy.random.seed()
    torch.seed()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for s in FORWARDED:  # (then the signals held back since the fork come in)
        signal.signal(s, signal.SIG_IGN if s in request["ignored"] else
                      signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    code = _run(os.path.abspath(argv[0]))  # (__main__.__file__ is absolute, as in Python 3.9+)
    try:  # as Python ends: its threads, then atexit, then the streams
        threading._shutdown()
    except BaseException:
        sys.excepthook(*sys.exc_info())
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code == -signal.SIGINT:  # (an unhandled Ctrl-C: Python ends by the signal itself)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    os._exit(code)


def _text(fd, unbuffered, encoding, errors, line):
    raw = io.open(fd, "wb", buffering=0, closefd=False)
    binary = raw if unbuffered else io.BufferedWriter(raw)
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, write_through=unbuffered,
                            line_buffering=line or os.isatty(fd))


def _run(script):
    import runpy
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # (a Ctrl-C held back lands here)
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        return -signal.SIGINT  # (ended by the signal, once the rest has ended as usual)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1


def _die_with(fd):
    """The copy dies as its stand-in dies (SIGKILL, say): its pipe's write end closes. (The
    server kills it sooner, as the stand-in's connection closes; this holds where the
    server itself is gone.)"""
    while os.read(fd, 1):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _die_with_parent(signum):
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
    except OSError:
        pass


if __name__ == "__main__":
    serve(sys.argv[1])
