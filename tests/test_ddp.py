"""torchrun on the CPU (gloo), two processes: the same recipe and outputs as one process."""
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import train
from conftest import ROOT, train_here
from elastic_worker import free_port
from machinery.config import UserError, resolve_config
from machinery.runtime import Dist
from train import SYNC_EVERY


def torchrun(*args, timeout=300, script="train.py"):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, script), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# An odd number of test images: two ranks take 250 and 249, so a sampler that pads the
# shorter share (counting an image twice) would show in the counts and the accuracy.
# 704 training images: 22 steps of 32 an epoch, room for a stop at SYNC_EVERY (20). The
# CIFAR-10 format, and --smoke's network at batch 32: what is tested here does not depend
# on the classes or the batch size, and the jobs take half the time.
TEST_IMAGES, TRAIN_IMAGES, BATCH = 499, 704, 32


def smoke(data_dir):
    """--smoke's network and epochs on odd_data."""
    return ["--smoke", "--dataset", "cifar10", "--data-dir", str(data_dir), "--batch-size", str(BATCH)]


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    from machinery import data
    root = tmp_path_factory.mktemp("odd")
    data.write_synthetic_dataset(str(root), "cifar10", n_train=TRAIN_IMAGES, n_test=TEST_IMAGES,
                                 seed=1)
    return root


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, odd_data):
    """The README's two-machine command, uninterrupted, on two agents of this host (one
    process each): with gradient accumulation, each rank's 16 images as 2 micro-batches of
    16, the gradients averaged over the ranks once per step (train.no_sync)."""
    out = tmp_path_factory.mktemp("ddp")
    said = run_readme_multi_node(out, odd_data)
    assert "processes 2 (batch 16 each, as 2 micro-batches of 8: BatchNorm sees those)" in said
    return out, said


@pytest.mark.slow
def test_two_processes_write_every_output_once(ddp_run):
    out, _ = ddp_run
    log = (out / "training_logs.md").read_text()
    assert log.count("Total params") == 1  # only rank 0 prints and writes
    assert log.count("### Run started") == 1 and log.count("| 0 |") == 1 and log.count("| 1 |") == 1
    ck = out / "checkpoints"
    assert sorted(os.listdir(ck)) == ["best_model.pt", "checkpoint_epoch_0.pt",
                                      "checkpoint_epoch_1.pt", "last.pt", "run.lock"]  # rank 0's
    assert (out / "gradcam_outputs" / "gradcam_grid.png").is_file()
    assert (out / "training_metrics_from_ckpt" / "metrics_overview.png").is_file()


@pytest.mark.slow
def test_checkpoint_is_the_plain_network_and_counts_every_test_image_once(ddp_run):
    out, _ = ddp_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model_state_dict"])
    assert ckpt["test_images"] == TEST_IMAGES  # no padding, no gaps
    assert ckpt["config"]["batch_size"] == BATCH  # the global batch, as in one process


@pytest.mark.slow
def test_logged_accuracy_equals_a_single_process_evaluation_of_the_checkpoint(ddp_run, tmp_path):
    out, _ = ddp_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    proc = train_here("--evaluate", out / "checkpoints" / "last.pt", "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = float(re.search(r"plain: top-1 ([0-9.]+)%", proc.stdout).group(1))
    assert single == round(ckpt["test_acc"][-1], 2)
    assert f"on {TEST_IMAGES} cifar10 test images" in proc.stdout


def readme_multi_node_command():
    """The README's two-machine torchrun command, as printed (its two lines joined)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    found = re.search(r"^(torchrun --nnodes=2 .*?\\\n.*?)\s+#", text, re.M)
    return found.group(1).replace("\\\n", " ").split()


def run_readme_multi_node(out, data_dir, fault="none"):
    """The README's command on two torchrun agents on this host, as two machines run it
    (HOST = 127.0.0.1, one process each, the smoke run): the agents' outputs."""
    command = readme_multi_node_command()
    assert "--max-restarts=3" in command and command[-2:] == ["--resume", "auto"]
    port = free_port()
    args = [a.replace("HOST:29500", f"127.0.0.1:{port}").replace("--nproc_per_node=8", "--nproc_per_node=1")
            .replace("/shared/run1", str(out)) for a in command[1:]]
    script = args.index("train.py")
    args[script:script + 1] = [os.path.join(ROOT, "tests", "faulty_run.py"), fault]
    args += [*smoke(data_dir), "--num-workers", "0", "--accum-steps", "2"]
    # one thread per process, as torchrun gives each of several processes on one machine:
    # the two agents share this machine's cores, as two machines would not
    env = dict(os.environ, FAULTY_ONCE=str(out / "killed-once"), OMP_NUM_THREADS="1")
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    try:
        outputs = [agent.communicate(timeout=400)[0] for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert [a.returncode for a in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return "".join(outputs)


@pytest.mark.slow
def test_the_readme_multi_node_command_survives_a_killed_worker_bit_identical(ddp_run, odd_data,
                                                                             tmp_path):
    """Rank 1 is SIGKILLed in epoch 1 (step 40: epoch 1's 18th of 22); torchrun restarts both workers, and the job resumes
    from last.pt (epoch 1, step 0) and ends exactly where the uninterrupted job ended.
    (The restart's race in torchrun's store is caught by test_elastic, whose restarts
    cost seconds.)"""
    said = run_readme_multi_node(tmp_path, odd_data, "step:40:KILL:1")
    assert (tmp_path / "killed-once").exists()  # the kill happened
    assert "resumed from" in said and "at epoch 1, step 0" in said
    straight = torch.load(ddp_run[0] / "checkpoints" / "last.pt", weights_only=True)
    elastic = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    for k in ("train_losses", "test_losses", "train_acc", "test_acc", "lrs"):
        assert straight[k] == elastic[k], k
    for k, v in straight["model_state_dict"].items():
        assert torch.equal(v, elastic["model_state_dict"][k]), k
    sa, sb = straight["optimizer_state_dict"]["state"], elastic["optimizer_state_dict"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_the_run_resumes(ddp_run, odd_data,
                                                                             tmp_path):
    out, _ = ddp_run
    flags = [*smoke(odd_data), "--out-dir", tmp_path, "--num-workers", "0",
             "--gradcam-images", "0", "--accum-steps", "2"]  # as ddp_run
    proc = torchrun("step:3:TERM:1", *flags, script="tests/faulty_run.py")  # rank 1 only
    assert proc.returncode != 0
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    # the ranks agree every SYNC_EVERY steps, so both stopped after step 20, not 3
    assert saved["position"] == {"epoch": 0, "step": SYNC_EVERY}
    proc = torchrun("--resume", "auto", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert straight["test_acc"] == resumed["test_acc"]
    for k, v in straight["model_state_dict"].items():
        assert torch.equal(v, resumed["model_state_dict"][k]), k


def test_what_two_processes_cannot_run_is_refused_before_anything_starts():
    """Checked by every rank before the data is read (the ranks' one-line errors, prefixed
    "error (rank N):", are the torchrun tests' below)."""
    cpu, two = torch.device("cpu"), Dist(rank=0, world=2)
    with pytest.raises(UserError, match="--batch-size 63 is the global batch and must divide "
                                        "by the 2 processes"):
        train.check_distributed(resolve_config({"batch_size": 63}), two, cpu)
    with pytest.raises(UserError, match="times --accum-steps 4"):
        train.check_distributed(resolve_config({"batch_size": 64, "accum_steps": 4}),
                                Dist(rank=1, world=32), cpu)
    with pytest.raises(UserError, match="--sync-bn needs CUDA"):
        train.check_distributed(resolve_config({"sync_bn": True}), two, cpu)
    train.check_distributed(resolve_config({"batch_size": 64, "accum_steps": 2}), two, cpu)


@pytest.mark.slow
def test_a_worker_killed_in_one_rank_ends_both_ranks_promptly(odd_data, tmp_path, monkeypatch):
    flags = [*smoke(odd_data), "--out-dir", tmp_path, "--num-workers", "2", "--gradcam-images", "0"]
    monkeypatch.setenv("FAULT_STAMP", str(tmp_path / "killed_at"))
    proc = torchrun("worker:5:1", *flags, script="tests/faulty_run.py", timeout=120)
    took = time.time() - float((tmp_path / "killed_at").read_text())
    # from the kill to the whole job's exit: about 1.5 s here; the fault then waits 30 s,
    # so a death noticed only by the loader's polling (every 5 s) would show, and a busy
    # machine's slower exit would not
    assert took < 20, took
    assert proc.returncode != 0
    assert ("error (rank 1): a data-loading worker was killed (out of memory?); not saved "
            "(under torchrun only the last checkpoint is consistent)") in proc.stderr
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # no epoch was completed
    log = (tmp_path / "crash_rank1.log").read_text()
    assert "Traceback" in log
    assert "is killed by signal: Killed" in log  # the SIGCHLD handler's, not the polling's


@pytest.mark.slow
def test_a_rank_whose_peer_hangs_ends_after_the_peer_timeout_with_one_line(odd_data, tmp_path,
                                                                          monkeypatch):
    """Rank 1 stops answering after step 3 (hung, or its machine gone without closing the
    connection): rank 0 waits in the next all-reduce for PEERS_GONE_S (5 s here, 300 s in a
    real run), not the process group's default 30 minutes, and says so."""
    monkeypatch.setenv("PEERS_GONE_S", "5")
    start = time.monotonic()
    proc = torchrun("hang:3:1", *smoke(odd_data), "--out-dir", tmp_path, "--num-workers", "0",
                    "--gradcam-images", "0", script="tests/faulty_run.py", timeout=180)
    assert proc.returncode != 0
    assert time.monotonic() - start < 90
    said = re.search(r"error \(rank 0\): the other processes of the torchrun job stopped "
                     r"answering( \(after 5 s\))?: one of them hung, or its machine or network "
                     r"is gone; ", proc.stderr)  # gloo gives the seconds in most cases
    assert said, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("error (rank 0)")[0]  # one line of ours


@pytest.mark.slow
def test_val_split_under_torchrun_holds_out_the_same_images_and_tests_once(odd_data, tmp_path):
    proc = torchrun(*smoke(odd_data), "--val-split", "200", "--out-dir", tmp_path,
                    "--num-workers", "0", "--gradcam-images", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "504 train / 200 validation (held out) images" in proc.stdout
    assert proc.stdout.count("test set, evaluated once") == 1
    assert f"on {TEST_IMAGES} images" in proc.stdout
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["val_images"] == 200 and ckpt["test_images"] == TEST_IMAGES
