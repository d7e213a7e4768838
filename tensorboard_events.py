"""A run's TensorBoard event files, in <out-dir>/tensorboard/ (`tensorboard --logdir` it,
or `%tensorboard` in the Colab notebook).

    every epoch   train/ and test/ (val/ with --val-split) loss, accuracy and top-5, lr,
                  speed/images_per_s, speed/epoch_seconds
    every 20 steps (the loop's sync points, so no new waits for the device)
                  train/running_loss, lr
    at the end    the Grad-CAM grid and the confusion matrix as images, and the run's
                  settings as hparams beside its final metrics

Every value is logged against the optimizer step, so a resumed run continues the same
curves: it purges whatever the interrupted run logged after the step it resumes from,
and a fresh run hides the events of an earlier run in the same folder. Writing is a
convenience: the first failure warns once and turns it off, training goes on.
"""
import dataclasses
import os

import numpy as np

from config import UserError


def available():
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 -- needs `tensorboard`
        return True
    except ImportError:
        return False


def wanted(cfg):
    """Whether to write events: --tensorboard on (a one-line error without the package),
    off, or auto (when the package is installed)."""
    if cfg.tensorboard == "on" and not available():
        raise UserError("--tensorboard on needs the tensorboard package: pip install tensorboard")
    return cfg.tensorboard == "on" or (cfg.tensorboard == "auto" and available())


class Events:
    """The event writer of one run; every method is a no-op once off."""

    def __init__(self, folder, purge_step, warn):
        from torch.utils.tensorboard import SummaryWriter
        self.warn, self.folder, self.writer = warn, folder, None
        try:
            self.writer = SummaryWriter(folder, purge_step=purge_step)
        except Exception as e:  # noqa: BLE001 -- an unwritable folder, a broken install
            self._failed(e)

    @classmethod
    def off(cls):
        self = cls.__new__(cls)
        self.writer = self.warn = self.folder = None
        return self

    def _guard(self, fn):
        """fn(), or, if it fails, one warning and no more events for this run."""
        if self.writer is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- a full disk, say: not worth stopping a run for
            self._failed(e)

    def _failed(self, e):
        self.warn(f"warning: cannot write TensorBoard events to {self.folder} "
                  f"({type(e).__name__}: {str(e)[:120]}); training goes on without them")
        self.writer = None

    def scalars(self, step, values):
        self._guard(lambda: [self.writer.add_scalar(k, v, step) for k, v in values.items()])

    def image(self, tag, png_path, step):
        """A PNG written by the run (Grad-CAM, the confusion matrix), as an image event."""
        if os.path.isfile(png_path):
            import matplotlib.image
            self._guard(lambda: self.writer.add_image(
                tag, np.asarray(matplotlib.image.imread(png_path))[..., :3], step, dataformats="HWC"))

    def hparams(self, cfg, metrics, step):
        """The run's settings beside its final metrics (the HParams tab), in this run's own
        folder (SummaryWriter.add_hparams would open a folder of its own)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams
        settings = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for k, v in dataclasses.asdict(cfg).items()}

        def write():
            for summary in hparams(settings, metrics):
                self.writer.file_writer.add_summary(summary, step)
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        self._guard(write)

    def flush(self):
        self._guard(lambda: self.writer.flush())

    def close(self):
        self._guard(lambda: self.writer.close())
        self.writer = None
