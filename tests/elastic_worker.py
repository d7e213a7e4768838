"""A tiny torchrun worker that joins its job as train.py does, for the elastic tests and
benchmarks/elastic.py: a restart costs seconds here, not a training run's start.

    torchrun ... tests/elastic_worker.py FOLDER KILLS [plain]

Each start appends a line to FOLDER/starts-rank<R>. Rank 1 SIGKILLs itself on its first
KILLS starts, after the ranks have met (torchrun then restarts both workers). At each
restart one rank (rank 0, then rank 1, in turn) waits DELAY seconds (env, default 1)
before it joins: the other then finds its peer's address of the killed round in
torchrun's store, the race that runtime.fresh_store ends. With STAY=1 rank 1 then waits
to be killed with its agent (a lost machine). `plain` joins with torch's own env://
set-up instead of runtime.init_distributed, to show that race.
"""
import contextlib
import os
import signal
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from machinery import runtime  # noqa: E402


def count_start(folder, rank):
    with open(os.path.join(folder, f"starts-rank{rank}"), "a+") as f:
        f.write(f"{time.time():.3f}\n")
        f.seek(0)
        return len(f.read().split())


def main(folder, kills, plain=False):
    rank = int(os.environ["RANK"])
    starts = count_start(folder, rank)
    runtime.PEERS_GONE_S = float(os.environ.get("PEERS_GONE_S", 30))  # a failed join ends soon
    if starts > 1 and rank == starts % 2:  # restarts alternate which rank comes late
        time.sleep(float(os.environ.get("DELAY", "1")))
    if plain:
        dist.init_process_group("gloo", timeout=timedelta(seconds=runtime.PEERS_GONE_S))
    else:
        runtime.init_distributed("cpu")
    met = torch.ones(1)
    dist.all_reduce(met)
    if rank == 1 and starts <= kills:
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == 1 and os.environ.get("STAY"):  # until the test kills this machine
        time.sleep(3600)
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for the killed peer: gloo ends it
    print(f"rank {rank}: start {starts}: {int(met.item())} ranks met", flush=True)
    dist.destroy_process_group()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_command(folder, kills, port, plain=False, rdzv_conf=None, restarts=None):
    """One torchrun agent of a two-node job on this host running this worker (restarts
    allowed: KILLS unless given)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=w{port}",
           f"--max-restarts={kills if restarts is None else restarts}"]
    cmd += [f"--rdzv-conf={rdzv_conf}"] if rdzv_conf else []
    return cmd + [os.path.abspath(__file__), folder, str(kills)] + (["plain"] if plain else [])


def start_agents(folder, kills, plain=False, rdzv_conf=None, env=None, restarts=None):
    """The two agents, as subprocesses with their output piped. The first serves the
    rendezvous store (it is started alone until it does), as node 0's agent would."""
    import subprocess
    port = free_port()
    cmd = agent_command(folder, kills, port, plain, rdzv_conf, restarts)
    agents = []
    for _ in range(2):
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, env=dict(os.environ, **(env or {}))))
        deadline = time.monotonic() + 60
        while not runtime.serves("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
    return agents


def kill_machine(agent):
    """SIGKILL an agent and every process under it, as losing its machine would (torchrun
    starts each worker in a session of its own, so a process group is not enough)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile
    doomed, grew = {agent.pid}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in doomed} - doomed
        doomed |= more
        grew = bool(more)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def finish(agents, timeout):
    """(exit codes, output) of agents; one still running after `timeout` seconds is
    killed with its worker (exit code None)."""
    import subprocess
    deadline, outputs, codes = time.monotonic() + timeout, [], []
    for agent in agents:
        try:
            outputs.append(agent.communicate(timeout=max(1, deadline - time.monotonic()))[0])
            codes.append(agent.returncode)
        except subprocess.TimeoutExpired:
            kill_machine(agent)
            outputs.append(agent.communicate()[0])
            codes.append(None)
    return codes, "".join(outputs)


def launch(folder, kills, plain=False, timeout=120, env=None):
    """Run a two-agent job to its end: (exit codes, output, seconds)."""
    start = time.monotonic()
    codes, output = finish(start_agents(folder, kills, plain, env=env), timeout)
    return codes, output, time.monotonic() - start


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), plain=sys.argv[3:] == ["plain"])
