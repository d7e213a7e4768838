"""The speed machinery as far as a CPU can check it: which precision and step mode a
device gets, the fast path's dispatch and its fallback to eager, the input-wait warning,
and the benchmark's GPU helpers. (The CUDA paths themselves run in benchmarks/gpu_check.sh.)"""
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from machinery import config, data, logs, runtime
import train
from conftest import ROOT, train_here

sys.path.insert(0, f"{ROOT}/benchmarks")
import gpu_busy  # noqa: E402
import throughput  # noqa: E402

CUDA = torch.device("cuda")


@pytest.fixture
def said(caplog):
    """The messages of the run's logger (whose handlers earlier in-process runs replaced)."""
    logs.setup_logging(None, enabled=False)
    logs.log.addHandler(caplog.handler)
    logs.log.setLevel(logging.INFO)
    yield lambda: [r.getMessage() for r in caplog.records]
    logs.log.removeHandler(caplog.handler)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend the CUDA device is a GPU of the given compute capability."""
    def set_capability(major, minor):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"GPU sm{major}{minor}")
    return set_capability


@pytest.mark.parametrize("capability, precision", [((7, 5), "fp16"), ((7, 0), "fp16"),
                                                   ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_is_bf16_where_the_gpu_has_it_and_fp16_before(gpu, capability, precision):
    gpu(*capability)  # T4 7.5, V100 7.0: fp16 + loss scaling; A100 8.0, H100 9.0: bf16
    assert runtime.pick_precision("auto", CUDA) == precision
    assert runtime.pick_precision("auto", torch.device("cpu")) == "fp32"
    assert runtime.pick_precision("fp16", CUDA) == "fp16"  # forcing is allowed


@pytest.mark.parametrize("name, device, needle", [
    ("bf16", CUDA, "GPU sm75 has no bf16 units (compute capability 7.5, bf16 needs 8.0); use fp16"),
    ("fp16", torch.device("cpu"), "--precision fp16 runs on CUDA only"),
    ("bf16", torch.device("mps"), "--precision bf16 runs on CUDA and the CPU"),
])
def test_a_precision_the_device_lacks_is_refused_in_one_line(gpu, name, device, needle):
    gpu(7, 5)
    with pytest.raises(config.UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        runtime.pick_precision(name, device)


def test_only_fp16_gets_a_loss_scaler_and_autocast_uses_the_chosen_type(monkeypatch):
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.append(enabled))
    for precision in ("fp16", "bf16", "fp32"):
        runtime.Runtime(CUDA, precision, torch.channels_last, None, None).grad_scaler()
    assert made == [True, False, False]
    rt = runtime.Runtime(torch.device("cpu"), "bf16", torch.channels_last, None, None)
    with rt.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("name, device, world, mode", [
    ("auto", CUDA, 1, "graphs"), ("auto", CUDA, 2, "eager"), ("auto", torch.device("cpu"), 1, "eager"),
    ("compile", torch.device("cpu"), 1, "compile"), ("eager", CUDA, 1, "eager"),
])
def test_step_mode_choice(name, device, world, mode):
    assert runtime.pick_step_mode(name, device, world) == mode


@pytest.mark.parametrize("flags, needle", [
    (["--step-mode", "graphs"], "--step-mode graphs needs CUDA; on cpu use eager or compile"),
    (["--precision", "fp16"], "--precision fp16 runs on CUDA only"),
])
def test_train_refuses_a_mode_the_cpu_lacks(flags, needle, capsys, tmp_path):
    assert train.main(flags + ["--smoke", "--device", "cpu", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_fast_modes_refuse_torchrun():
    with pytest.raises(config.UserError, match="under torchrun the step runs eagerly"):
        runtime.pick_step_mode("compile", torch.device("cpu"), world=2)


# -----------------------------------------------------------------------------
# TrainingNetwork: the fast version for full batches, eager for the rest, fallback

def _net():
    torch.manual_seed(0)
    return train.ResNet((1, 1, 1, 1), 8, 10, dropout=0.3)


def _train(model, net, batches, full=16, accum=1):
    """train_step over (x, y) batches, each keyed as train_epoch keys its steps, after the
    model's fast version is made for `full` images as train.py makes it; returns the
    losses, and the network's state and momentum at the end."""
    cfg = config.Config(cutmix_prob=0.5, accum_steps=accum)
    opt, sched = train.make_optimizer(net, cfg, steps_per_epoch=len(batches))
    rt = runtime.make_runtime(torch.device("cpu"), "fp32", True, data.DATASETS["cifar100"]["mean"],
                              data.DATASETS["cifar100"]["std"])
    model.prepare(rt.example_batch(full))
    losses = []
    model.train()
    for step, (x, y) in enumerate(batches):
        torch.manual_seed(step)
        rng = np.random.default_rng(step)
        loss, _, _ = train.train_step(model, x, y, opt, sched, rt.grad_scaler(), rt, cfg, rng)
        losses.append(loss)
    state = [t.clone() for t in net.state_dict().values()]
    return losses, state + [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]


def _batches(sizes=(16, 16, 16, 8)):  # an epoch's last batch is smaller
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
            for n in sizes]


def _same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("mode, maker", [("graphs", "graph_network"),
                                         ("compile", "compile_network")])
def test_a_fast_version_runs_full_batches_and_its_warm_up_leaves_no_trace(monkeypatch, mode, maker):
    """The fast version is made before training with warm-up passes that move the
    BatchNorm statistics and draw dropout masks; both are undone, so training is the same
    as eager (here the 'fast' version is the network itself, as a CUDA graph's is in effect)."""
    calls = []

    def fake_maker(net, x):
        for _ in range(3):  # as make_graphed_callables' and compile_network's warm-up
            net(x).float().sum().backward()

        def fast(x):
            calls.append(len(x))
            return net(x)
        return fast
    monkeypatch.setattr(runtime, maker, fake_maker)
    net = _net()
    model = runtime.TrainingNetwork(net, mode)
    fast = _train(model, net, _batches())
    assert calls == [16, 16, 16]  # full batches only: the last (8) ran eagerly
    assert model.mode == mode and model.ready_in is not None
    eager_net = _net()
    eager = _train(runtime.TrainingNetwork(eager_net, "eager"), eager_net, _batches())
    assert _same(fast[1], eager[1]) and _same(fast[0], eager[0])


def test_a_failing_fast_mode_warns_once_and_trains_on_eagerly(monkeypatch, said):
    def broken_compile(net, x):
        net(x).float().sum().backward()  # half-way through, as a compiler may fail
        raise RuntimeError("Compiler: cc not found")
    monkeypatch.setattr(runtime, "compile_network", broken_compile)
    net = _net()
    model = runtime.TrainingNetwork(net, "compile")
    fell_back = _train(model, net, _batches())
    warnings = [m for m in said() if "failed" in m]
    assert warnings == ["warning: --step-mode compile failed (RuntimeError: Compiler: cc not "
                        "found); continuing in eager mode"]
    assert model.mode == "eager"
    eager_net = _net()
    eager = _train(runtime.TrainingNetwork(eager_net, "eager"), eager_net, _batches())
    assert _same(fell_back[1], eager[1])  # nothing of the failed attempt is left


def test_a_run_resumed_at_an_epochs_last_batch_gets_the_fast_version_for_full_batches(monkeypatch):
    made, calls = [], []

    def fake_maker(net, x):
        made.append(tuple(x.shape))

        def fast(x):
            calls.append(len(x))
            return net(x)
        return fast
    monkeypatch.setattr(runtime, "graph_network", fake_maker)
    net = _net()
    model = runtime.TrainingNetwork(net, "graphs")
    _train(model, net, _batches((8, 16, 16)))  # resumed at the last step: a smaller batch first
    assert made == [(16, 3, 32, 32)] and calls == [16, 16]
    # --accum-steps 2: made for the micro-batch, which every full step's two halves use
    made.clear(), calls.clear()
    model = runtime.TrainingNetwork(_net(), "graphs")
    _train(model, model.net, _batches((16, 16, 10)), full=8, accum=2)
    assert made == [(8, 3, 32, 32)] and calls == [8, 8, 8, 8]  # the last step's 5 + 5: eager


def test_train_py_makes_the_fast_version_before_any_batch_on_a_synthetic_full_one(monkeypatch,
                                                                                tiny_data):
    made = []

    def fake_compile(net, x):
        made.append((tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return net
    monkeypatch.setattr(runtime, "compile_network", fake_compile)
    logs.setup_logging(None, enabled=False)
    cfg = config.resolve_config({"blocks": [1, 1, 1, 1], "width": 16, "batch_size": 48,
                                 "step_mode": "compile", "num_workers": 0, "data_dir": tiny_data})
    x, y = data.read_split(tiny_data, "cifar100", "train")
    images = data.Prepared((x, y), (x[:10], y[:10]), (x[:10], y[:10]), data.CIFAR100_CLASSES,
                           *data.normalization(tiny_data, "cifar100"), False)
    run = train.build_run(cfg, torch.device("cpu"), runtime.Dist(), images)
    train.build_run(dataclasses.replace(cfg, accum_steps=3), torch.device("cpu"), runtime.Dist(), images)
    assert made == [((48, 3, 32, 32), torch.float32, True), ((16, 3, 32, 32), torch.float32, True)]
    assert run.model.fast is not None and run.train_loader._iterator is None  # nothing loaded yet


@pytest.mark.parametrize("width, channels_last", [(8, False), (12, False), (16, True), (24, False),
                                                   (64, True)])
def test_a_width_that_may_crash_onednn_natively_runs_contiguous_on_the_cpu(tiny_data, caplog, width,
                                                                           channels_last):
    """The fifth review: --width 8 in channels_last died in a segfault at batches 3, 5, 12,
    16, 17 and 48 at 32 px (an AVX-512 CPU), which the 48 px guard let through."""
    cfg = config.resolve_config({"blocks": [1, 1, 1, 1], "width": width, "batch_size": 8,
                                 "num_workers": 0, "data_dir": tiny_data})
    x, y = data.read_split(tiny_data, "cifar100", "train")
    images = data.Prepared((x[:16], y[:16]), (x[:8], y[:8]), (x[:8], y[:8]), data.CIFAR100_CLASSES,
                           *data.normalization(tiny_data, "cifar100"), False)
    with caplog.at_level("WARNING"):
        run = train.build_run(cfg, torch.device("cpu"), runtime.Dist(), images)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert run.rt.memory_format == fmt
    assert next(run.model.parameters()).is_contiguous(memory_format=fmt)
    assert ("channels_last off" in caplog.text) == (not channels_last)


def test_compile_warm_up_starts_each_pass_without_gradients_as_a_new_step(monkeypatch):
    seen, marks = [], []
    net = _net()
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: (
        lambda x: (seen.append(all(p.grad is None for p in net.parameters())), net(x))[1]))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(len(seen)))
    runtime.compile_network(net, torch.randn(4, 3, 32, 32))
    assert seen == [True, True, True] and marks == [0, 1, 2]  # before each of the 3 passes
    model = runtime.TrainingNetwork(net, "compile")
    model.fast, model.shape = net, (4, 3, 32, 32)
    model.train()(torch.randn(4, 3, 32, 32))  # a compiled training step is a new step too
    assert marks == [0, 1, 2, 3]


@pytest.mark.slow
def test_compile_continues_a_run_as_eager_does_and_saves_the_plain_network(tmp_path):
    """train.py --step-mode compile (the real torch.compile: Inductor's C++ kernels on the
    CPU, half a minute to compile on a cold cache) continuing an eager run's epoch 0: the
    same losses as eager within float32 rounding (without dropout: compiled kernels draw
    other masks; here they differ by about 2e-7 relative, the bound is 1e-4), and
    checkpoints of the plain network (no _orig_mod. keys)."""
    root = tmp_path / "data"
    data.write_synthetic_dataset(str(root), "cifar10", n_train=64, n_test=32, seed=2)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train_here("--dataset", "cifar10", "--data-dir", root, "--out-dir", eager,
                      "--blocks", "1", "1", "1", "1", "--width", "8", "--dropout", "0",
                      "--epochs", "2", "--batch-size", "16", "--num-workers", "0",
                      "--save-every", "1", "--gradcam-images", "0",
                      "--target-accuracy", "0").returncode == 0
    start = eager / "checkpoints" / "checkpoint_epoch_0.pt"
    proc = train_here("--resume", start, "--step-mode", "compile", "--out-dir", compiled)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step mode compile: ready in" in proc.stdout  # it did not fall back to eager
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (eager, compiled))
    assert b["model_state_dict"].keys() == a["model_state_dict"].keys()
    assert b["config"]["step_mode"] == "compile" and b["epoch"] == 1
    assert torch.allclose(torch.tensor(b["train_losses"]), torch.tensor(a["train_losses"]), rtol=1e-4)
    # the network it leaves: the same test loss (the weights differ by ~1e-5 after the epoch)
    assert b["test_losses"] == pytest.approx(a["test_losses"], rel=1e-3)
    assert not torch.equal(b["model_state_dict"]["fc.weight"],
                           torch.load(start, weights_only=True)["model_state_dict"]["fc.weight"])


def test_the_batchnorm_snapshot_is_one_fused_copy_per_dtype(monkeypatch):
    copies = []
    real = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: (copies.append(
        {t.dtype for t in dst}), real(dst, src)))
    from model import ResNet34
    kept = runtime.BufferSnapshot(ResNet34())
    kept.take()
    kept.restore()
    assert sorted(map(sorted, copies), key=str) == [[torch.float32]] * 2 + [[torch.int64]] * 2
    assert sum(len(live) for live, _ in kept.groups) == 132


def test_small_copies_to_a_gpu_go_through_pinned_memory(monkeypatch):
    pinned, moved = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: (pinned.append(self.dtype), self)[1])
    real_to = torch.Tensor.to

    def to(self, *args, **kw):  # stands in for the copy to a GPU this machine may not have
        if str(args[0]).startswith("cuda"):
            moved.append(kw.get("non_blocking"))
            return self
        return real_to(self, *args, **kw)
    monkeypatch.setattr(torch.Tensor, "to", to)
    data.to_device(np.arange(5), torch.device("cuda"), np.int64)
    data.to_device(np.arange(5), torch.device("cpu"), np.int64)  # no pinning off a GPU
    assert pinned == [torch.int64] and moved == [True]
    used = []
    monkeypatch.setattr(data, "to_device", lambda a, device, dtype=np.float32: (
        used.append(dtype), torch.from_numpy(np.asarray(a, dtype)))[1])
    train.cutmix(torch.zeros(4, 3, 8, 8), torch.arange(4), np.random.default_rng(0), 1.0, 1.0)
    assert used == [np.int64]  # CutMix's shuffled order goes the same way


# -----------------------------------------------------------------------------
# Input: time spent waiting for the loader, and the warning that the GPU starves

def test_the_wait_for_batches_is_measured():
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i
    p = train.new_progress()
    assert list(train.timed(slow(), p)) == [0, 1, 2]
    assert 0.14 < p["input_wait"] < 1.0


def test_a_gpu_waiting_for_input_is_told_once_how_to_feed_it(said):
    run = types.SimpleNamespace(rt=types.SimpleNamespace(device=CUDA), workers=2,
                                cfg=config.Config(), said_input=False)
    train.check_input(run, 0, waited=0.99, seconds=10.0)  # 9.9%: below the 10% the README says
    assert not said()
    train.check_input(run, 1, waited=1.01, seconds=10.0)  # 10.1%
    train.check_input(run, 2, waited=4.0, seconds=10.0)
    assert len(said()) == 1 and "waited for training batches 10% of epoch 1" in said()[0]
    assert "2 CPU workers" in said()[0] and "--aug-on-device" in said()[0]
    run.rt.device = torch.device("cpu")  # a CPU trains slower than any loader: nothing to say
    run.said_input = False
    train.check_input(run, 3, waited=4.0, seconds=10.0)
    assert len(said()) == 1


# -----------------------------------------------------------------------------
# The benchmark's GPU helpers

@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution and matmul"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<float>", "memory format conversions and copies"),
    ("sm80_xmma_dgrad_implicit_gemm_indexed_f16f16", "convolution and matmul"),
    ("sm80_xmma_wgrad_implicit_gemm_f16f16_f32", "convolution and matmul"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<__half, float, 512, true, 1>", "batch norm"),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<...>", "batch norm"),
    ("void at::native::multi_tensor_apply_kernel<FusedSgdMathFunctor>", "optimizer and clipping"),
    ("void at::native::vectorized_elementwise_kernel<4, AddFunctor<float>>", "element-wise and reductions"),
    ("ampere_sgemm_32x32_sliced1x4_tn", "convolution and matmul"),
    ("aten::mkldnn_convolution", "convolution and matmul"),
    ("aten::native_batch_norm_backward", "batch norm"),
    ("aten::_fused_sgd_", "optimizer and clipping"),
    ("Memcpy HtoD (Pinned -> Device)", "memory format conversions and copies"),
    ("aten::empty", "other"),
])
def test_kernels_are_classified_by_kind_of_work(name, kind):
    assert gpu_busy.kernel_kind(name) == kind


def test_the_breakdown_adds_each_kernels_time_to_its_kind():
    times = {"aten::mkldnn_convolution": 6.0, "sm80_xmma_dgrad_implicit_gemm": 2.0,
             "aten::native_batch_norm_backward": 1.0, "aten::add_": 0.5, "aten::empty": 0.5}
    assert gpu_busy.breakdown(times) == {"convolution and matmul": 0.8, "batch norm": 0.1,
                                         "element-wise and reductions": 0.05, "other": 0.05}
    assert list(gpu_busy.breakdown(times))[0] == "convolution and matmul"  # largest first


def test_gpu_busy_averages_nvidia_smi_samples_after_the_first_ones():
    # a fake nvidia-smi that says its lines, then keeps sampling (as the real one does)
    # until it is stopped; the block waits for the lines, however slowly Python starts
    fake = [sys.executable, "-c", "import time\nfor v in ('10', '20', '80 %', '[N/A]', '100'):\n"
            "    print(v, flush=True)\ntime.sleep(600)"]
    with gpu_busy.GpuBusy(command=fake) as busy:
        deadline = time.monotonic() + 120
        while len(busy.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert busy.samples == [10.0, 20.0, 80.0, 100.0] and busy.fraction == pytest.approx(0.9)
    with gpu_busy.GpuBusy(command=["/no/such/nvidia-smi"]) as none:
        pass
    assert none.fraction is None


def test_the_benchmark_reads_train_py_s_own_epoch_lines(smoke_run):
    _, proc = smoke_run
    runs = throughput.parse_train_log(proc.stdout)
    assert [e["epoch"] for e in runs["epochs"]] == [0, 1]
    assert all(e["images_per_s"] > 0 and e["seconds"] > 0 for e in runs["epochs"])
    assert runs["epochs"][-1]["train_loss"] > 0 and not runs["fell_back"]


def test_step_variants_cover_both_formats_and_compile_once(gpu):
    gpu(9, 0)
    variants = throughput.step_variants(CUDA, ["eager", "graphs", "compile"])
    assert ("eager", "fp16", False) in variants and ("graphs", "bf16", True) in variants
    assert [v for v in variants if v[0] == "compile"] == [("compile", "bf16", True)]
    gpu(7, 5)
    assert {p for _, p, _ in throughput.step_variants(CUDA, ["eager"])} == {"fp16"}


def test_gpu_check_keeps_to_its_budget_and_writes_what_it_took(tmp_path):
    import gpu_check
    path = tmp_path / "check.json"

    def sleeps(seconds, **figures):
        return lambda ctx: (time.sleep(seconds), figures)[1]
    rows = [gpu_check.Row("quick", 0.2, sleeps(0.2, rate=1.0)),
            gpu_check.Row("too big to fit", 50, sleeps(0)),
            gpu_check.Row("broken", 0.1, lambda ctx: 1 / 0),
            gpu_check.Row("overruns", 0.1, sleeps(30)),
            gpu_check.Row("never reached", 0.1, sleeps(0))]
    t0 = time.monotonic()
    res = gpu_check.run_rows(rows, 1.5, str(path), say=lambda line: None)
    assert time.monotonic() - t0 < 5  # stopped by the alarm, not after the 30 s row
    saved = json.loads(path.read_text())
    assert saved.pop("written_by") == "benchmarks/gpu_check.py"
    assert saved == res and not saved["complete"] and saved["budget_s"] == 1.5
    status = {r["name"]: r["status"] for r in saved["rows"]}
    assert status["quick"] == "done" and saved["rows"][0]["rate"] == 1.0
    assert status["too big to fit"].startswith("skipped")
    assert status["broken"] == "failed: ZeroDivisionError: division by zero"
    assert status["overruns"] == "stopped: the budget ran out during this row"
    assert "never reached" not in status


def _with_this_python():
    """gpu_check.sh runs $PYTHON (python3 from PATH without it): this interpreter's, so a
    venv that is not activated tests its own packages."""
    return {**os.environ, "PYTHON": sys.executable}


def test_gpu_check_dry_run_lists_its_rows_and_budget_anywhere():
    proc = subprocess.run(["bash", f"{ROOT}/benchmarks/gpu_check.sh", "--dry-run"],
                          capture_output=True, text=True, timeout=60, env=_with_this_python())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    budget = int(re.fullmatch(r"budget (\d+) .*", lines[-1]).group(1))
    estimates = [float(re.match(r" *(\d+)s ", ln).group(1)) for ln in lines[:-1]]
    assert budget <= 360 and sum(estimates) <= budget and len(estimates) == 13
    assert any("graphs against eager" in ln for ln in lines)


@pytest.mark.slow
def test_gpu_check_rows_rehearse_on_the_cpu(monkeypatch, tmp_path):
    """Every row's code, on the CPU with a reduced network, eager standing in for the
    GPU's step modes and the sync debug mode recorded instead of set. The three train.py
    rows are one row's code, and with eager standing in the same run: it runs once."""
    import gpu_check
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: modes.append(mode))
    ctx = gpu_check.Context(throughput, torch.device("cpu"), quick=True,
                            alias={"graphs": "eager", "compile": "eager"})
    rows = [r for r in gpu_check.plan()
            if not r.name.startswith("train.py") or r.name == "train.py, 2 epochs, eager"]
    assert len(rows) == len(gpu_check.plan()) - 2
    res = gpu_check.run_rows(rows, 600, str(tmp_path / "c.json"), ctx,
                             say=lambda line: None)
    failed = [(r["name"], r["status"]) for r in res["rows"] if r["status"] != "done"]
    assert not failed and res["complete"]
    agree = next(r for r in res["rows"] if r["name"].startswith("graphs against eager"))
    assert agree["agree"] and agree["max_rel_diff"] == 0.0  # eager against eager, on a CPU
    accum = next(r for r in res["rows"] if r["name"].startswith("--accum-steps 2"))
    assert accum["adds_up"] and accum["rel_diff"] == 0.0  # eager against eager, on a CPU
    waits = next(r for r in res["rows"] if r["name"].startswith("no waits"))
    assert waits["waits_for_the_device"] == "none" and modes.count("error") >= gpu_check.SYNC_STEPS
    assert all(r["images_per_s"] for r in res["rows"] if "images_per_s" in r)


def test_gpu_busy_asks_nvidia_smi_for_the_gpu_by_its_pci_bus_id(monkeypatch):
    # torch's cuda:1 is not nvidia-smi's GPU 1 where CUDA_VISIBLE_DEVICES renumbers them
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(
        pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0))
    assert gpu_busy.nvidia_smi_id(torch.device("cuda", 1)) == "00000000:3B:00.0"
    monkeypatch.setattr(gpu_busy.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    command = throughput.gpu_busy(torch.device("cuda", 1)).command
    assert command[command.index("-i") + 1] == "00000000:3B:00.0"


def test_gpu_check_tells_a_missing_torch_from_a_missing_gpu(monkeypatch, capsys):
    import gpu_check
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    assert gpu_check.main(["--json", "unused.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: torch cannot be imported (ModuleNotFoundError")


def test_gpu_check_refuses_in_one_line_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(["bash", f"{ROOT}/benchmarks/gpu_check.sh"], capture_output=True,
                          text=True, timeout=120, env=_with_this_python())
    assert proc.returncode == 1 and not proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a "
        "machine with an NVIDIA GPU"]


# -----------------------------------------------------------------------------
# Checkpoints written in the background while the next epoch trains

def test_a_background_checkpoint_holds_the_state_it_was_given(tmp_path):
    import threading
    from machinery import checkpointing
    from machinery.checkpoint_files import load_checkpoint, save_checkpoint
    weights, go = torch.zeros(1000), threading.Event()

    def save_later(ckpt, path):
        go.wait(10)
        save_checkpoint(ckpt, path)
    writer = checkpointing.CheckpointWriter()
    writer.submit(save_later, checkpointing.to_host({"model_state_dict": {"w": weights}}),
                  str(tmp_path / "a.pt"))
    weights += 1  # training goes on, in place, before the file is written
    go.set()
    writer.wait()
    saved = load_checkpoint(str(tmp_path / "a.pt"))["model_state_dict"]["w"]
    assert torch.equal(saved, torch.zeros(1000))


def test_a_failed_background_write_is_raised_by_the_next_wait(tmp_path):
    from machinery import checkpointing

    def full(*_):
        raise OSError(28, "No space left on device", "last.pt")
    writer = checkpointing.CheckpointWriter()
    writer.submit(full)
    writer.join()  # joining alone keeps the error for wait()
    with pytest.raises(OSError, match="No space left"):
        writer.submit(full)  # a new write first waits for the last one
    writer.wait()  # the error is raised once


@pytest.mark.parametrize("tool", ["throughput", "predict_files", "page_latency", "folder_memory",
                                  "gpu_check"])
def test_a_benchmark_replaces_only_its_own_figures_without_force(tool, tmp_path, capsys):
    """--json is a file-writing flag like any other: someone's file is refused in one line
    (before anything is measured), the benchmark's own earlier figures are not."""
    import importlib
    from machinery import own_files
    module = importlib.import_module(tool)
    theirs = tmp_path / "notes.json"
    theirs.write_text('{"mine": true}')
    with pytest.raises(SystemExit) as e:
        module.main(["--json", str(theirs)])
    assert e.value.code == 2 and theirs.read_text() == '{"mine": true}'
    assert f"{theirs} exists and is not figures benchmarks/{tool}.py wrote" in capsys.readouterr().err
    own_files.write_json(str(tmp_path / "ours.json"), {"rows": []}, f"benchmarks/{tool}.py")
    assert own_files.refused_json(str(tmp_path / "ours.json"), f"benchmarks/{tool}.py", False) is None
