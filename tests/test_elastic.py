"""Elastic torchrun jobs: restarted workers meet again, and an agent whose peers are gone
ends within a bounded time. tests/elastic_worker.py joins its job as train.py does
(runtime.init_distributed) and starts in seconds; the README's command with train.py
itself, killed and restarted, is in test_ddp."""
import os
import threading
import time
from datetime import timedelta

import pytest
from torch.distributed import TCPStore

import elastic_worker
from machinery import runtime


def test_a_restarted_rank_skips_the_killed_rank_0s_store_and_joins_the_new_one(monkeypatch):
    """torchrun's store still names the port of the killed round's rank 0 when rank 1
    restarts first; rank 1 must wait for the new rank 0's store, not give up on the old
    port nor wait out TCPStore's own retries of it (its timeout, 20 s here)."""
    agent = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    agent.set(runtime.STORE_KEY, str(elastic_worker.free_port()))  # nobody serves it now
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    monkeypatch.setenv("RANK", "1")
    new = {}

    def rank_0_comes_late():
        time.sleep(1)
        new["store"] = TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
        agent.set(runtime.STORE_KEY, str(new["store"].port))

    threading.Thread(target=rank_0_comes_late).start()
    start = time.monotonic()
    store = runtime.fresh_store(2, timedelta(seconds=20))
    assert time.monotonic() - start < 10
    store.set("from rank 1", "hello")
    assert new["store"].get("from rank 1") == b"hello"  # the new round's store

    monkeypatch.setenv("RANK", "0")  # and rank 0 serves a store of its own, published
    mine = runtime.fresh_store(2, timedelta(seconds=20))
    assert agent.get(runtime.STORE_KEY) == str(mine.port).encode()
    assert mine.port not in (agent.port, new["store"].port)


def test_under_an_elastic_agent_the_process_group_is_made_in_a_fresh_store(monkeypatch):
    """The wiring the race test can only catch most of the time: with torchrun's agent
    store (elastic), init_distributed makes the process group in fresh_store's store, with
    the bound for gone peers; without it (--standalone), in torch's own env:// set-up."""
    made = []
    monkeypatch.setattr(runtime, "fresh_store", lambda world, timeout: ("fresh", world, timeout))
    monkeypatch.setattr(runtime.torch.distributed, "init_process_group",
                        lambda backend, **kw: made.append((backend, kw)))
    monkeypatch.setattr(runtime.torch.distributed, "new_group", lambda **kw: None)
    monkeypatch.setattr(runtime.torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    runtime.init_distributed("cpu")
    bound = timedelta(seconds=runtime.PEERS_GONE_S)
    assert made[-1] == ("gloo", {"store": ("fresh", 2, bound), "rank": 1, "world_size": 2,
                                 "timeout": bound})
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    runtime.init_distributed("cpu")
    assert made[-1] == ("gloo", {"timeout": bound})


@pytest.mark.slow
def test_an_elastic_job_meets_again_after_each_of_three_killed_workers(tmp_path):
    """Each restart has one rank come a second late, so the other finds the killed round's
    addresses in torchrun's store. Joined through torch's env:// there (elastic_worker
    `plain`), 2 of 5 such jobs failed or hung on an idle machine, 9 of 10 beside two CPU
    burners (benchmarks/elastic.py); with runtime.fresh_store taken out of
    init_distributed this test failed 2 of 2 times."""
    codes, said, _ = elastic_worker.launch(str(tmp_path), kills=3, timeout=150)
    assert codes == [0, 0], said[-3000:]
    for rank in (0, 1):
        assert len((tmp_path / f"starts-rank{rank}").read_text().split()) == 4
        assert f"rank {rank}: start 4: 2 ranks met" in said


@pytest.mark.slow
def test_an_agent_whose_peers_machine_is_lost_ends_after_its_join_timeout(tmp_path):
    """Node 1 (agent and worker) is SIGKILLed while the ranks work: rank 0's collective
    fails at once on the dropped connection, its agent restarts it and waits join_timeout
    for node 1 to come back (600 s unless --rdzv-conf says otherwise), then ends."""
    agents = elastic_worker.start_agents(str(tmp_path), 0, rdzv_conf="join_timeout=5",
                                         env={"STAY": "1"}, restarts=2)
    deadline = time.monotonic() + 120
    while not (tmp_path / "starts-rank1").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the ranks have met; rank 0 waits in a collective, rank 1 sleeps
    elastic_worker.kill_machine(agents[1])
    lost = time.monotonic()
    codes, said = elastic_worker.finish(agents, timeout=120)
    took = time.monotonic() - lost
    assert codes[0] == 1, said[-3000:]
    assert "RendezvousTimeoutError" in said
    assert took < 60, took  # join_timeout 5 s plus a restart


@pytest.mark.slow
def test_a_node_whose_peer_never_comes_ends_after_the_join_timeout(tmp_path):
    import subprocess
    cmd = elastic_worker.agent_command(str(tmp_path), 0, elastic_worker.free_port(),
                                       rdzv_conf="join_timeout=3")
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "RendezvousTimeoutError" in proc.stderr
    assert time.monotonic() - start < 60
    assert not os.listdir(tmp_path)  # no worker started
