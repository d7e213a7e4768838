"""How many worker processes a job may start: one question, asked by the decoder of
image folders, the DataLoaders, evaluation and predict, with one answer."""
import os

MOST = 8  # past this, more processes mostly wait on the disk and on each other


def usable_cpus():
    """The CPU cores this process may run on: its affinity where the system has one
    (Linux; taskset, cgroups and SLURM narrow it), else the machine's count (macOS,
    Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers():
    """One worker process per usable core, at most MOST."""
    return max(1, min(MOST, usable_cpus()))


def chosen_workers(num_workers):
    """--num-workers as given (0: none, in the main process), or -1: default_workers()."""
    return default_workers() if num_workers is None or num_workers < 0 else num_workers
