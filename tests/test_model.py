import pytest
import torch

from machinery.checkpoint_files import CheckpointError, load_checkpoint, network_name, save_checkpoint
from model import ResNet, ResNet34, count_parameters, model_from_checkpoint


def test_seed_network_has_the_reference_parameter_count_and_output_shape():
    model = ResNet34(num_classes=100)
    assert count_parameters(model) == 30_032_292
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_seed_network_keeps_full_resolution_in_the_first_stage():
    model = ResNet34().eval()
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(l1=o.shape))
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(l4=o.shape))
    model(torch.randn(1, 3, 32, 32))
    assert seen["l1"] == (1, 64, 32, 32)  # no max-pool
    assert seen["l4"] == (1, 512, 4, 4)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_the_stem_pool_ablation_halves_the_first_stage_and_survives_a_checkpoint(tmp_path):
    pooled = ResNet((1, 1, 1, 1), 8, 10, stem_pool=True).eval()
    seen = {}
    pooled.layer1.register_forward_hook(lambda m, i, o: seen.update(l1=o.shape))
    pooled(torch.randn(1, 3, 32, 32))
    assert seen["l1"] == (1, 8, 16, 16)  # ImageNet's max-pool: 3/4 of the pixels gone at once
    assert count_parameters(pooled) == count_parameters(ResNet((1, 1, 1, 1), 8, 10))
    assert "stem_pool" not in ResNet((1, 1, 1, 1), 8, 10).model_args  # the seed's files unchanged
    path = str(tmp_path / "pooled.pt")
    save_checkpoint({"model_state_dict": pooled.state_dict(), "model_args": pooled.model_args}, path)
    rebuilt, _ = model_from_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), pooled(x))
    assert "stem max-pool" in network_name(pooled.model_args)


def test_reduced_network_is_the_same_code():
    model = ResNet(blocks=(1, 1, 1, 1), width=16, num_classes=10)
    assert model.eval()(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert len(model.layer3) == 1 and model.fc.in_features == 128


def test_messages_call_the_seed_network_resnet34_and_others_by_their_shape():
    # checkpoint_files knows the seed's shape without importing the network: the two agree
    assert network_name(ResNet34().model_args) == "ResNet34 (100 classes)"
    assert network_name(ResNet((1, 1, 1, 1), 16, 10).model_args) == \
        "ResNet(blocks=[1, 1, 1, 1], width=16) (10 classes)"


def test_seed_format_checkpoint_is_rebuilt_from_the_file_alone(tmp_path):
    # The reference's checkpoints hold only weights: the shape is inferred from them.
    net = ResNet(blocks=(2, 1, 1, 1), width=8, num_classes=7)
    path = str(tmp_path / "seed_style.pt")
    save_checkpoint({"epoch": 3, "model_state_dict": net.state_dict()}, path)
    model, _ = model_from_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), net.eval()(x))


def test_checkpoint_of_another_class_count_is_refused_naming_it(tmp_path):
    net = ResNet(blocks=(1, 1, 1, 1), width=8, num_classes=10)
    path = str(tmp_path / "c10.pt")
    save_checkpoint({"model_state_dict": net.state_dict(),
                     "model_args": {"blocks": [1, 1, 1, 1], "width": 8, "num_classes": 10}}, path)
    with pytest.raises(CheckpointError, match="num_classes is 10 there, expected 100"):
        model_from_checkpoint(path, expected={"num_classes": 100})


def test_checkpoint_whose_weights_contradict_its_arguments_is_refused(tmp_path):
    net = ResNet(blocks=(1, 1, 1, 1), width=8, num_classes=10)
    path = str(tmp_path / "lying.pt")
    save_checkpoint({"model_state_dict": net.state_dict(),
                     "model_args": {"blocks": [5, 5, 5, 5], "width": 64, "num_classes": 10}}, path)
    with pytest.raises(CheckpointError, match="another network"):
        model_from_checkpoint(path)


def test_corrupt_truncated_and_missing_checkpoints_give_clear_errors(tmp_path):
    good = str(tmp_path / "good.pt")
    save_checkpoint({"model_state_dict": ResNet((1, 1, 1, 1), 8, 5).state_dict()}, good)
    blob = open(good, "rb").read()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "noise.pt").write_bytes(b"\x00garbage" * 100)
    for name in ("trunc.pt", "noise.pt"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(str(tmp_path / name))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "absent.pt"))
    torch.save({"weights": 1}, str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "payload_ran"
    path = str(tmp_path / "evil.pt")
    torch.save({"model_state_dict": {}, "x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_in_torchs_older_format_loads_and_counts_as_a_checkpoint(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False), as torch before 1.6 wrote:
    read as safely as a zip archive, and protected as a checkpoint from being replaced."""
    from machinery.checkpoint_files import is_checkpoint_file
    net = ResNet((1, 1, 1, 1), 8, 10)
    path = tmp_path / "old.pt"
    torch.save({"model_state_dict": net.state_dict(), "model_args": net.model_args}, path,
               _use_new_zipfile_serialization=False)
    assert is_checkpoint_file(str(path))
    rebuilt, _ = model_from_checkpoint(str(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), net.eval()(x))
    (tmp_path / "text.pt").write_text("not one")
    assert not is_checkpoint_file(str(tmp_path / "text.pt"))
