"""A run's TensorBoard event files, in <out-dir>/tensorboard/<start time>/: `tensorboard
--logdir <out-dir>/tensorboard` (or `%tensorboard` in the Colab notebook) shows each run of
the folder as a run of its own, side by side.

    every epoch   train/ and test/ (val/ with --val-split) loss, accuracy and top-5, lr,
                  speed/images_per_s, speed/epoch_seconds
    every 20 steps (the loop's sync points, so no new waits for the device)
                  train/running_loss, lr
    at the end    the Grad-CAM grid and the confusion matrix as images, and the run's
                  settings as hparams beside its final metrics

Every value is logged against the optimizer step. A fresh run starts a folder of its own,
named by its start time and kept in its checkpoints, so a resumed run continues its own
curves: it purges whatever the interrupted run logged after the step it resumes from.
(A run resumed from a checkpoint older than these folders continues in tensorboard/
itself, as it did.) Writing is a convenience: a TensorBoard that cannot be imported under
--tensorboard auto, or the first failure to write, warns once, and training goes on.
"""
import dataclasses
import functools
import os
import time

import numpy as np

from .config import UserError


@functools.lru_cache(maxsize=None)
def import_problem():
    """None when TensorBoard's writer imports; otherwise the exception it raised. Any
    exception counts: a broken install raises more than ImportError (protobuf's version
    clash, common in Colab and conda, raises TypeError: Descriptors cannot be created
    directly)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 -- needs `tensorboard`
    except Exception as e:  # noqa: BLE001 -- whatever it is, the run goes on without it
        return e
    return None


def _installed(problem):
    """False only when the package is simply absent (no warning due under auto)."""
    return not (isinstance(problem, ModuleNotFoundError) and problem.name == "tensorboard")


def wanted(cfg, warn=None):
    """Whether to write events: --tensorboard on (a one-line error if TensorBoard cannot be
    imported), off, or auto (when it imports; a broken install is one warning, through
    `warn` when given)."""
    problem = import_problem()
    if cfg.tensorboard == "on" and problem is not None:
        if not _installed(problem):
            raise UserError("--tensorboard on needs the tensorboard package: pip install tensorboard")
        raise UserError(f"--tensorboard on: TensorBoard cannot be imported ({_describe(problem)})")
    if cfg.tensorboard == "auto" and problem is not None and _installed(problem) and warn:
        warn(f"warning: TensorBoard cannot be imported ({_describe(problem)}); training goes "
             f"on without its events (--tensorboard off silences this)")
    return cfg.tensorboard == "on" or (cfg.tensorboard == "auto" and problem is None)


def _describe(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"


def run_name(resumed, folder):
    """The sub-folder of `folder` a run writes its events to: a resumed run's own (its
    checkpoints keep the name), a fresh run's new one; "" (the folder itself) for a
    checkpoint of this repo older than the sub-folders. A checkpoint from elsewhere (the
    reference's) says None: its run has no events here, so it gets a new folder."""
    name = new_run_name(folder) if resumed is None else resumed.get("tensorboard_run", "")
    return new_run_name(folder) if name is None else name


def new_run_name(folder):
    """A fresh run's sub-folder of `folder`: its start time, unique within the folder."""
    name = time.strftime("%Y-%m-%d_%H-%M-%S")
    unique, n = name, 1
    while os.path.exists(os.path.join(folder, unique)):
        n += 1
        unique = f"{name}_{n}"
    return unique


def for_run(cfg, main, done, name, say, warn):
    """The TensorBoard writer (rank 0: `main`) of a run's folder <out-dir>/tensorboard/<name>,
    continuing from `done` optimizer steps: what an interrupted run logged after them is
    purged. Off on the other ranks and where it is not wanted (--tensorboard)."""
    if not main or not wanted(cfg, warn=warn):
        return Events.off()
    top = os.path.join(cfg.out_dir, "tensorboard")
    events = Events(os.path.join(top, name), purge_step=done + 1 if done else 0, warn=warn)
    say(f"TensorBoard: tensorboard --logdir {top}")
    return events


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
