import copy
import io
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from machinery import config, data, logs
import train
from model import ResNet34
from machinery.runtime import make_runtime


def test_onecycle_reproduces_the_reference_log_learning_rates():
    cfg = config.Config()  # the reference recipe: 200 epochs, batch 128
    steps_per_epoch = -(-50_000 // cfg.batch_size)  # 391: the last partial batch is kept
    opt, sched = train.make_optimizer(torch.nn.Linear(1, 1), cfg, steps_per_epoch)
    lrs = {}
    for epoch in range(166):
        for _ in range(steps_per_epoch):
            opt.step()
            sched.step()
        lrs[epoch] = sched.get_last_lr()[0]
    # the LR column of the reference's training log, after epochs 0, 39 and 165
    assert round(lrs[0], 6) == 0.004148
    assert round(lrs[39], 6) == 0.100000
    assert round(lrs[165], 6) == 0.010736
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["weight_decay"] == 5e-4


def test_config_defaults_are_the_reference_recipe():
    cfg = config.Config()
    assert (cfg.epochs, cfg.batch_size, cfg.max_lr, cfg.div_factor, cfg.final_div_factor,
            cfg.pct_start) == (200, 128, 0.1, 25.0, 1000.0, 0.2)
    assert (cfg.cutmix_prob, cfg.cutmix_alpha, cfg.label_smoothing, cfg.grad_clip,
            cfg.dropout, cfg.seed, cfg.target_accuracy) == (0.3, 1.0, 0.1, 1.0, 0.3, 1, 75.0)
    assert tuple(cfg.blocks) == (5, 5, 5, 5) and cfg.width == 64


def test_every_config_field_is_a_flag_and_explicit_flags_beat_smoke_presets():
    explicit, _ = config.parse_args(["--smoke", "--epochs", "3", "--batch-size", "16", "--precision", "fp32"])
    cfg = config.resolve_config(explicit)
    assert cfg.smoke and cfg.epochs == 3 and cfg.batch_size == 16 and cfg.precision == "fp32"
    assert list(cfg.blocks) == config.SMOKE["blocks"] and cfg.width == config.SMOKE["width"]
    help_text = config.build_parser().format_help()
    for f in config.flags():
        assert "--" + f.name.replace("_", "-") in help_text
    assert "--val-folder" not in help_text  # decided by the data folder, never typed


def test_cutmix_lambda_is_the_area_actually_kept():
    # each image is a constant equal to its index, so pasted pixels are easy to count
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous()
    y = torch.arange(8)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        mixed, ya, yb, lam = train.cutmix(x, y, rng, alpha=1.0, prob=1.0)
        kept = (mixed == x).all(1).float().mean((1, 2))  # fraction of own pixels per image
        moved = yb != ya
        assert torch.allclose(kept[moved], torch.full_like(kept[moved], lam), atol=1e-6)
        for i in range(8):  # the pasted pixels come from the image whose label is y_b
            pasted = mixed[i][mixed[i] != x[i]]
            assert (pasted == float(yb[i])).all()
    out = train.cutmix(x, y, np.random.default_rng(0), alpha=1.0, prob=0.0)
    assert out[0] is x and out[3] == 1.0


def test_cutmix_fires_on_the_configured_fraction_of_batches():
    x, y = torch.zeros(4, 3, 8, 8), torch.arange(4)
    fired = sum(train.cutmix(x, y, np.random.default_rng(s), 1.0, 0.3)[0] is not x
                for s in range(2000))
    assert 0.25 < fired / 2000 < 0.35


def _runtime():
    spec = data.DATASETS["cifar100"]
    return make_runtime(torch.device("cpu"), "fp32", False, spec["mean"], spec["std"])


def _step(model, cfg, x, y, opt=None, sched=None):
    if opt is None:
        opt, sched = train.make_optimizer(model, cfg, steps_per_epoch=10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rng = np.random.default_rng(0)
    return train.train_step(model, x, y, opt, sched, scaler, _runtime(), cfg, rng), sched


def test_one_real_training_step_of_the_full_seed_network():
    torch.manual_seed(0)
    model = ResNet34(num_classes=100).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cfg = config.Config(cutmix_prob=1.0)  # exercise the CutMix path too
    (loss_sum, correct, bad), sched = _step(model, cfg, x, y)
    assert not bad and torch.isfinite(loss_sum) and 0 <= correct <= 4
    after = model.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert sched.last_epoch == 1


def _small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))


def _params_and_momentum(model, opt):
    return [t.clone() for p in model.parameters() for t in (p, opt.state[p]["momentum_buffer"])]


def test_a_non_finite_step_changes_neither_weights_nor_momentum_but_advances_the_schedule():
    model, cfg = _small_net(), config.Config(cutmix_prob=0.0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt, sched = train.make_optimizer(model, cfg, steps_per_epoch=10)
    _step(model, cfg, x, y, opt, sched)
    before = _params_and_momentum(model, opt)
    (loss_sum, _, bad), _ = _step(model, cfg, x * float("nan"), y, opt, sched)
    assert bad and loss_sum == 0  # a lost step adds nothing to the epoch's loss
    assert all(torch.equal(a, b) for a, b in zip(before, _params_and_momentum(model, opt)))
    assert sched.last_epoch == 2
    _step(model, cfg, x, y, opt, sched)  # and training goes on from there
    assert not torch.equal(before[0], next(model.parameters()))


def test_a_skipped_first_step_leaves_the_momentum_as_if_it_never_happened():
    cfg = config.Config(cutmix_prob=0.0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    skipped = _small_net()
    opt, sched = train.make_optimizer(skipped, cfg, steps_per_epoch=10)
    _step(skipped, cfg, x * float("nan"), y, opt, sched)
    opt.param_groups[0].update(lr=0.05, momentum=0.9)  # same LR for both second steps
    _step(skipped, cfg, x, y, opt, sched)
    plain = _small_net()
    opt2, sched2 = train.make_optimizer(plain, cfg, steps_per_epoch=10)
    opt2.param_groups[0].update(lr=0.05, momentum=0.9)
    _step(plain, cfg, x, y, opt2, sched2)
    for a, b in zip(_params_and_momentum(skipped, opt), _params_and_momentum(plain, opt2)):
        assert torch.allclose(a, b, atol=1e-7)  # fused SGD's fresh buffers would be garbage


def test_no_step_waits_for_the_device(tiny_data, monkeypatch):
    """Values go from device to host only every SYNC_EVERY steps and at the epoch's end."""
    x, y = data.read_split(tiny_data, "cifar100", "train")
    cfg = config.Config(blocks=[1, 1, 1, 1], width=8, batch_size=4, num_workers=0)
    loader, _ = data.make_loaders(x, y, x[:1], y[:1], data.DATASETS["cifar100"]["mean"], 4, 4)
    model = train.ResNet((1, 1, 1, 1), 8, 100)
    opt, sched = train.make_optimizer(model, cfg, train.steps_per_epoch(loader))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    reads, inside = [], [False]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        real = getattr(torch.Tensor, name)

        def read(self, *a, _real=real, _name=name, **kw):
            reads.append((_name, inside[0]))
            return _real(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, read)
    real_step = train.train_step

    def step(*args):
        inside[0] = True
        try:
            return real_step(*args)
        finally:
            inside[0] = False
    monkeypatch.setattr(train, "train_step", step)
    steps = train.steps_per_epoch(loader)
    assert steps > 2 * train.SYNC_EVERY
    train.train_epoch(model, loader, opt, sched, scaler, _runtime(), cfg, 0, train.new_progress())
    assert not [name for name, during_step in reads if during_step]
    # two reads per SYNC_EVERY steps, two at the end, one by the DataLoader (its seed)
    assert len(reads) <= 2 * (steps // train.SYNC_EVERY) + 3


def test_the_update_is_the_learning_rate_times_the_clipped_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x, y = torch.randn(8, 3, 32, 32) * 100, torch.randint(0, 10, (8,))
    cfg = config.Config(grad_clip=5.0, cutmix_prob=0.0, momentum=0.0, weight_decay=0.0)
    apart = copy.deepcopy(model)  # the raw gradient, computed on its own
    F.cross_entropy(apart(x), y, label_smoothing=cfg.label_smoothing).backward()
    raw = [p.grad for p in apart.parameters()]
    norm = torch.sqrt(sum((g ** 2).sum() for g in raw))
    assert norm > 10 * cfg.grad_clip  # the clipping has work to do
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, cfg, x, y)
    lr = cfg.max_lr / cfg.div_factor  # the schedule's first LR; a first step has no momentum yet
    for p0, p, g in zip(before, model.parameters(), raw):
        # (float32 weights of ~0.01 resolve a change to ~1e-9)
        assert torch.allclose(p0 - p.detach(), lr * g * cfg.grad_clip / norm, rtol=1e-3, atol=5e-9)


@pytest.mark.parametrize("flags, needle", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--epochs", "-3"], "--epochs must be at least 1"),
    (["--cutmix-prob", "1.5"], "--cutmix-prob must be in [0, 1]"),
    (["--blocks", "1", "1"], "--blocks"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--device", "tpu9"], "--device"),
])
def test_invalid_flags_give_one_line_and_exit_2(flags, needle, capsys, tmp_path):
    assert train.main(flags + ["--out-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("error:")


def test_model_summary_goes_to_the_log_and_leaves_batchnorm_statistics_alone(capsys):
    model = train.ResNet((1, 1, 1, 1), 8, 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    logs.table.addHandler(handler)
    logs.table.setLevel(logging.INFO)
    try:
        logs.log_model_summary(model)
    finally:
        logs.table.removeHandler(handler)
    assert "Total params" in written.getvalue() and not capsys.readouterr().out
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_training_stops_once_the_target_accuracy_is_reached(tmp_path, tiny_data, capsys):
    flags = ["--data-dir", tiny_data, "--blocks", "1", "1", "1", "1", "--width", "8",
             "--epochs", "4", "--batch-size", "50", "--num-workers", "0",
             "--gradcam-images", "0", "--out-dir", str(tmp_path)]
    assert train.main(flags + ["--target-accuracy", "2"]) == 0  # chance is 1%
    acc = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["test_acc"]
    assert len(acc) < 4, "the learnable data should pass 2% before the last epoch"
    assert acc[-1] >= 2 and all(a < 2 for a in acc[:-1])  # stopped at the first hit
    assert "reached the target" in capsys.readouterr().out


def _resnet_in_eval_mode():
    """A reduced network whose BatchNorm uses its running statistics: without batch
    statistics, micro-batches and the whole batch compute the same gradient."""
    from model import ResNet
    torch.manual_seed(0)
    return ResNet((1, 1, 1, 1), 8, 10, dropout=0.0).eval()


def test_two_micro_batches_make_the_update_of_the_whole_batch():
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    results = {}
    for k in (1, 2, 4):
        model, cfg = _resnet_in_eval_mode(), config.Config(cutmix_prob=0.0, accum_steps=k)
        opt, sched = train.make_optimizer(model, cfg, steps_per_epoch=10)
        lrs = []
        for _ in range(3):
            (loss_sum, correct, bad), _ = _step(model, cfg, x, y, opt, sched)
            lrs.append(sched.get_last_lr()[0])
        results[k] = float(loss_sum), float(correct), _params_and_momentum(model, opt), lrs
    for k in (2, 4):
        assert results[k][0] == pytest.approx(results[1][0], rel=1e-5)
        assert results[k][1] == results[1][1] and results[k][3] == results[1][3]
        assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5)
                   for a, b in zip(results[k][2], results[1][2]))
    # in training mode BatchNorm normalises each micro-batch by its own statistics
    stats = {}
    for k in (1, 2):
        model, cfg = _resnet_in_eval_mode().train(), config.Config(cutmix_prob=0.0, accum_steps=k)
        (loss_sum, _, _), _ = _step(model, cfg, x, y)
        stats[k] = float(loss_sum), model.bn1.running_var.clone()
    assert stats[1][0] != pytest.approx(stats[2][0], rel=1e-4)
    assert not torch.allclose(stats[1][1], stats[2][1])


def _aliasing_graphed(net):
    """A stand-in a CPU can run for what torch.cuda.make_graphed_callables returns: its
    backward writes each parameter's gradient into one static buffer, the same tensor at
    every call, and hands back a detached alias of it, as the graphed backward does (its
    replay overwrites those buffers in place: pytorch/pytorch#181723)."""
    params = tuple(net.parameters())
    static = [torch.zeros_like(p) for p in params]

    class Graphed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *_):
            with torch.enable_grad():
                ctx.out = net(x)
            return ctx.out.detach()

        @staticmethod
        def backward(ctx, grad):
            for buffer, g in zip(static, torch.autograd.grad(ctx.out, params, grad)):
                buffer.copy_(g)  # the replay
            return (None, *(buffer.detach() for buffer in static))
    return lambda x: Graphed.apply(x, *params)


def test_micro_batches_add_up_under_cuda_graphs_whose_backward_hands_over_static_buffers():
    from machinery.runtime import TrainingNetwork
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    results = {}
    for k, mode in ((1, "eager"), (2, "graphs")):
        net, cfg = _resnet_in_eval_mode(), config.Config(cutmix_prob=0.0, accum_steps=k)
        model = TrainingNetwork(net, mode)
        if mode == "graphs":  # made for the micro-batch, as train.py makes it
            model.fast, model.shape = _aliasing_graphed(net), (16 // k, 3, 32, 32)
        model.training = True  # the wrapper trains; the network's BatchNorm stays in eval mode
        opt, sched = train.make_optimizer(net, cfg, steps_per_epoch=10)
        for _ in range(2):
            _step(model, cfg, x, y, opt, sched)
        results[k] = _params_and_momentum(net, opt)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(results[2], results[1]))


def test_a_batch_that_micro_batches_do_not_split_evenly_is_refused():
    with pytest.raises(config.UserError, match=r"--batch-size must be a multiple of "
                                               r"--accum-steps 3 .*\(got 128\)"):
        config.resolve_config({"accum_steps": 3})
    with pytest.raises(config.UserError, match=r"--accum-steps must be at least 1 \(got 0\)"):
        config.resolve_config({"accum_steps": 0})
    from machinery.runtime import Dist
    cfg = config.resolve_config({"accum_steps": 2, "batch_size": 66})  # 33 per micro-batch
    with pytest.raises(config.UserError, match=r"--batch-size 66 is the global batch and must "
                                               r"divide by the 2 processes times --accum-steps 2"):
        train.check_distributed(cfg, Dist(0, 2), torch.device("cpu"))


def test_under_ddp_the_gradients_are_averaged_once_per_step(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_resnet_in_eval_mode())
        reductions = []

        def count(state, bucket):
            reductions.append(bucket.index())
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut
        model.register_comm_hook(None, count)
        cfg = config.Config(cutmix_prob=0.0, accum_steps=4)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        opt, sched = train.make_optimizer(model, cfg, steps_per_epoch=10)
        _step(model, cfg, x, y, opt, sched)
        buckets = len(set(reductions))
        assert len(reductions) == buckets  # each bucket once, after the fourth micro-batch
    finally:
        dist.destroy_process_group()
