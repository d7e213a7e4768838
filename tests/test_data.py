import os
import pickle

import albumentations as A
import numpy as np
import pytest
import torch

from machinery import data, runtime
from machinery.images import normalize


def test_generated_files_have_the_real_layout_and_read_back_exactly(tmp_path):
    root = str(tmp_path)
    data.write_synthetic_dataset(root, "cifar100", n_train=200, n_test=100, seed=0)
    folder = os.path.join(root, "cifar-100-python")
    assert sorted(os.listdir(folder)) == ["meta", "test", "train"]
    with open(os.path.join(folder, "train"), "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert raw["data"].dtype == np.uint8 and raw["data"].shape == (200, 3072)
    assert {"fine_labels", "coarse_labels", "filenames", "batch_label"} <= raw.keys()
    x, y = data.read_split(root, "cifar100", "train")
    assert x.shape == (200, 32, 32, 3) and y.shape == (200,)
    # the row layout: 1024 red values, then green, then blue, each 32x32 row-major
    assert x[7, 2, 5, 0] == raw["data"][7, 0 * 1024 + 2 * 32 + 5]
    assert x[7, 2, 5, 2] == raw["data"][7, 2 * 1024 + 2 * 32 + 5]
    names = data.read_class_names(root, "cifar100")
    assert names == data.CIFAR100_CLASSES and len(names) == 100 and names[0] == "apple"


def test_generated_data_is_deterministic_and_cifar10_layout_too(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for root in (a, b):
        data.write_synthetic_dataset(root, "cifar10", n_train=50, n_test=20, seed=5)
    folder = "cifar-10-batches-py"
    files = sorted(os.listdir(os.path.join(a, folder)))
    assert files == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        assert open(os.path.join(a, folder, name), "rb").read() == \
               open(os.path.join(b, folder, name), "rb").read()
    x, y, xt, yt, names = data.load_dataset(a, "cifar10", download=False)
    assert len(x) == 50 and len(xt) == 20 and names == data.CIFAR10_CLASSES


def test_missing_data_offline_says_what_is_missing_and_where(tmp_path):
    with pytest.raises(data.DataError, match="cifar-100-python"):
        data.load_dataset(str(tmp_path), "cifar100", download=False)


def test_failed_download_gives_one_line_with_the_url(tmp_path, monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")
    monkeypatch.setattr(torchvision.datasets, "CIFAR100",
                        type("Fake", (), {"__init__": no_network, "url": "https://example/c100"}))
    with pytest.raises(data.DataError) as err:
        data.ensure_dataset(str(tmp_path), "cifar100", download=True)
    msg = str(err.value)
    assert "download failed" in msg and "https://example/c100" in msg and "\n" not in msg


def test_corrupt_data_file_is_reported(tmp_path):
    root = str(tmp_path)
    data.write_synthetic_dataset(root, "cifar100", n_train=20, n_test=10)
    with open(os.path.join(root, "cifar-100-python", "test"), "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(data.DataError, match="cannot read"):
        data.load_dataset(root, "cifar100", download=False)


def test_files_pickled_by_numpy_1_and_python_2_still_read(tmp_path):
    # The real CIFAR files name numpy.core.multiarray (numpy 1); numpy 2 writes numpy._core.
    root = str(tmp_path)
    data.write_synthetic_dataset(root, "cifar100", n_train=20, n_test=10)
    path = os.path.join(root, "cifar-100-python", "test")
    x, y = data.read_split(root, "cifar100", "test")
    with open(path, "rb") as f:
        blob = f.read()
    assert b"numpy._core.multiarray" in blob
    with open(path, "wb") as f:
        f.write(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x2, y2 = data.read_split(root, "cifar100", "test")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


class Payload:
    """Unpickling this runs a shell command, as a crafted data file could."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def poison(root, names, marker):
    """Replace data set files with pickles that would create `marker` when loaded."""
    for name in names:
        with open(os.path.join(root, "cifar-100-python", name), "wb") as f:
            pickle.dump({"data": Payload(marker), "fine_labels": [0]}, f, protocol=2)


def test_a_data_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    root, marker = str(tmp_path / "data"), tmp_path / "payload_ran"
    data.write_synthetic_dataset(root, "cifar100", n_train=20, n_test=10)
    poison(root, ["train"], marker)
    path = os.path.join(root, "cifar-100-python", "train")
    with pytest.raises(data.DataError) as err:
        data.load_dataset(root, "cifar100", download=False)
    assert str(err.value) == (f"refusing to read {path}: it asks to run posix.system, and a data "
                              f"set file holds only lists, strings, numbers and numpy arrays")
    assert not marker.exists()
    with open(path, "rb") as f:  # the payload is real: an ordinary unpickler runs it
        pickle.load(f)
    assert marker.exists()


SPEC = data.DATASETS["cifar100"]


def test_uint8_hand_over_normalised_on_the_device_equals_the_reference_pipeline(tiny_data):
    x, y = data.read_split(tiny_data, "cifar100", "train")
    ours = data.CIFARDataset(x, y, data.train_transform(SPEC["mean"]), augment=True, seed=3)
    reference = data.CIFARDataset(x, y, data.reference_transform(SPEC["mean"], SPEC["std"]),
                                   augment=True, seed=3)
    items = [(2, i) for i in range(len(x))]  # one batch: the same keyed random state
    got = ours.__getitems__(items)
    assert got[0][0].dtype == torch.uint8 and got[0][0].shape == (32, 32, 3)
    rt = runtime.make_runtime(torch.device("cpu"), "fp32", True, SPEC["mean"], SPEC["std"])
    batch, _ = rt.batch(torch.stack([im for im, _ in got]), torch.tensor([l for _, l in got]))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    want = torch.stack([im for im, _ in reference.__getitems__(items)])
    assert torch.allclose(batch, want, atol=1e-5)
    assert not torch.allclose(batch, normalize(x, SPEC["mean"], SPEC["std"]))  # augmented


def test_train_augmentation_is_keyed_and_pads_with_black(tiny_data):
    x, y = data.read_split(tiny_data, "cifar100", "train")
    ds = data.CIFARDataset(x, y, data.train_transform(SPEC["mean"]), augment=True)
    outs = torch.stack([ds[(0, i)][0] for i in range(len(x))])
    assert outs.shape == (len(x), 32, 32, 3) and outs.dtype == torch.uint8
    assert not torch.equal(outs, torch.from_numpy(x))  # something was augmented
    # the zero padding (PadIfNeeded 40x40 + RandomCrop) shows up as black pixels; the
    # generated images themselves have none
    assert (x.reshape(len(x), -1, 3).max(-1) > 0).all()
    assert (outs.flatten(1, 2).amax(-1) == 0).any()
    assert ds[(0, 5)][0].equal(ds[(0, 5)][0])  # keyed: same (epoch, index), same result
    assert not ds[(0, 5)][0].equal(ds[(1, 5)][0])


@pytest.mark.filterwarnings("ignore:Argument")
def test_the_pipeline_refuses_a_misspelt_augmentation_argument(monkeypatch):
    # albumentations only warns about an argument it does not know and drops it; the real
    # pipeline, built strict, refuses: here GaussNoise gets 1.x's name for its range
    real = A.GaussNoise
    monkeypatch.setattr(data.A, "GaussNoise", lambda **kw: real(var_limit=(10, 50), **kw))
    with pytest.raises(ValueError, match="var_limit"):
        data.train_transform(SPEC["mean"])
    monkeypatch.setattr(data.A, "GaussNoise", real)
    import warnings
    with warnings.catch_warnings():  # as written, with no warnings at all
        warnings.simplefilter("error")
        data.train_transform(SPEC["mean"])


def _augment_all(images, labels, workers, epoch=0, batch=8):
    train, _ = data.make_loaders(images, labels, images[:1], labels[:1], SPEC["mean"],
                                 batch, 8, num_workers=workers, seed=1)
    train.batch_sampler.set_epoch(epoch)
    return [xb for xb, _ in train]


def test_each_worker_gets_its_own_augmentation_stream_and_results_do_not_depend_on_workers():
    # 32 copies of one image: any two equal outputs would mean a shared random stream.
    img = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    images, labels = np.repeat(img, 32, 0), np.zeros(32, dtype=np.int64)
    two = _augment_all(images, labels, workers=2)
    # batches 0 and 1 come from different workers
    assert not torch.equal(two[0], two[1])
    flat = torch.cat(two).flatten(1)
    assert len(torch.unique(flat, dim=0)) >= 30
    zero = _augment_all(images, labels, workers=0)
    assert all(torch.equal(a, b) for a, b in zip(two, zero))
    other_epoch = _augment_all(images, labels, workers=0, epoch=1)
    assert not torch.equal(zero[0], other_epoch[0])


def test_epoch_batches_cover_every_index_once_with_a_new_order_each_epoch():
    s = data.EpochBatches(100, batch_size=32, seed=1)
    first = [i for batch in s for _, i in batch]
    assert len(s) == 4 and [len(b) for b in s] == [32, 32, 32, 4]
    s.set_epoch(1)
    second = [pair for batch in s for pair in batch]
    assert sorted(first) == list(range(100)) and all(e == 1 for e, _ in second)
    assert first != [i for _, i in second]
    s.set_epoch(1, start_step=2)
    assert [pair for batch in s for pair in batch] == second[64:]


def test_ranks_split_each_global_batch_and_together_see_the_single_process_batches():
    one = list(data.EpochBatches(100, 32, seed=1))
    ranks = [list(data.EpochBatches(100, 32, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)  # same steps per epoch
    for step, batch in enumerate(one):
        assert ranks[0][step] + ranks[1][step] == batch
        assert abs(len(ranks[0][step]) - len(ranks[1][step])) <= 1
    # a last global batch of one image cannot feed two ranks: that step is dropped
    assert len(data.EpochBatches(65, 32, world=2)) == 2 and len(data.EpochBatches(65, 32)) == 3
