"""Which files in a folder a tool wrote, so that it replaces those and no others: a manifest
beside them (.export.json) with each file's SHA-256, as it was written. A file the
manifest does not name, or one changed since (a card edited by hand, a picture of one's
own put in examples/), is someone else's: a tool replaces it only when told (--force).

    theirs = foreign(folder, names_about_to_be_written)   # refuse unless --force
    ... write ...
    record(folder, names_written)

And whose a temporary file is: writer_alive(pid, path) tells a live writer's file from one
a killed process left (its id in the name), which the next writer may remove.
"""
import hashlib
import json
import os
import stat

MANIFEST = ".export.json"
MANIFEST_MAX = 1 << 20  # bytes: a manifest names a dozen files


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def written(folder):
    """{relative path: SHA-256} the manifest names; {} without one (or one unreadable). A
    name that leads out of the folder (absolute, .., through a link) is no name of its: a
    manifest travels with the folder (a Space's is pushed and cloned), and one crafted
    must not make a tool remove or replace files elsewhere."""
    path = os.path.join(folder, MANIFEST)
    try:  # a regular file of a manifest's size, never through a link (to /dev/zero, a pipe)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MANIFEST_MAX:
            return {}
        with open(path, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {name: h for name, h in files.items() if isinstance(name, str) and inside(folder, name)}


def inside(folder, name):
    """Whether `name` is a path within `folder`, no link on the way out of it."""
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        return False
    real = os.path.realpath(os.path.join(folder, os.path.dirname(name)))
    return os.path.commonpath([real, os.path.realpath(folder)]) == os.path.realpath(folder)


def unchanged(folder, name, mine):
    """Whether `name` (relative to folder) is as the tool wrote it (mine: written())."""
    path = os.path.join(folder, name)
    return name in mine and os.path.isfile(path) and sha256(path) == mine[name]


def foreign(folder, names):
    """Those of `names` that exist in `folder` and are not the tool's own, unchanged."""
    mine = written(folder)
    return [n for n in names if os.path.lexists(os.path.join(folder, n))
            and not unchanged(folder, n, mine)]


def leftovers(folder, keep, writes):
    """Files of an earlier write, unchanged, that this write does not make again: `keep`
    are the names it makes (an earlier Space's 6th example, when this one has 3), and
    `writes(name)` says whether the tool ever writes a file of that name there. A name the
    manifest holds beyond those (.git/config, a checkpoint: a stale manifest, or one
    crafted and pushed) is never removed: the tool removes only what it could have written."""
    mine = written(folder)
    return [n for n in sorted(mine) if n not in keep and writes(n) and unchanged(folder, n, mine)]


def record(folder, names):
    """The manifest of the files just written (each hashed as it is on disk now)."""
    files = {n: sha256(os.path.join(folder, n)) for n in names}
    tmp = os.path.join(folder, f"{MANIFEST}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"written_by": "export.py", "files": files}, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(folder, MANIFEST))


def refused_json(path, tool, force):
    """Why a tool may not write its JSON figures to `path` (None where it may): the file
    exists, and is not a JSON that `tool` wrote ("written_by"), and --force was not given."""
    if force or not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("written_by") == tool:
                return None
    except (OSError, ValueError, AttributeError):
        pass
    return (f"{path} exists and is not figures {tool} wrote; add --force to replace it, or "
            f"give another --json")


def write_json(path, figures, tool):
    """`figures` (a dict) as JSON at `path`, marked as `tool`'s, written whole or not at all."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"written_by": tool, **figures}, f, indent=1)
    os.replace(tmp, path)


def writer_alive(pid, path):
    """Whether the process `pid`, which named `path` after itself, is still the one that
    wrote it: alive, and started before the file was last written (not a later process
    that took its id)."""
    return _alive(pid) and process_started(pid) <= os.stat(path).st_mtime


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    return True


def process_started(pid):
    """When the process `pid` started, in seconds since the epoch (Linux: its start time
    in clock ticks after boot, and the boot's time); 0 where that cannot be known."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK") - 1  # (boot: whole seconds)
    except (OSError, ValueError, IndexError, StopIteration):
        return 0
