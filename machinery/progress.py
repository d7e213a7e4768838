"""Where a training run stands inside an epoch: the progress dict saved in checkpoints,
the running sums kept on the device (Tally), and the time spent waiting for input.
train.py's loop uses these; they hold no part of the recipe."""
import time

import torch


def new_progress():
    """Where a run stands inside an epoch: the next step and the running sums so far
    (input_wait: seconds this process waited for the loader's batches)."""
    return {"step": 0, "loss_sum": 0.0, "correct": 0.0, "seen": 0, "nonfinite": 0,
            "input_wait": 0.0}


def timed(batches, p):
    """Yields the loader's batches, adding the time spent waiting for each to p["input_wait"]:
    when the workers keep up it is near zero, as the next batch is ready before it is asked for."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        p["input_wait"] += time.perf_counter() - t0
        yield batch


class Tally:
    """An epoch's running sums, kept on the device so that no step waits for it: summed
    loss, lambda-weighted correct count, and the run of non-finite steps (current,
    longest); the image count is known on the host. Rank 0 carries the sums of a resumed
    epoch (saved already summed over ranks); the streak is every rank's."""

    def __init__(self, p, dist, device):
        self.sums = torch.tensor([p["loss_sum"], p["correct"]] if dist.main else [0.0, 0.0],
                                 dtype=torch.float64, device=device)
        self.streak = torch.full((2,), float(p["nonfinite"]), device=device)
        self.seen = p["seen"] if dist.main else 0

    def add(self, loss_sum, correct, bad, n):
        self.sums += torch.stack([loss_sum, correct]).double()
        current = (self.streak[0] + 1) * bad
        self.streak = torch.stack([current, torch.maximum(self.streak[1], current)])
        self.seen += n

    def settle(self, p, dist):
        """(progress with the sums over all ranks, longest streak on any rank): two reads."""
        current, longest = dist.all_max(self.streak).tolist()
        seen = torch.tensor([self.seen], dtype=torch.float64, device=self.sums.device)
        loss, acc, seen = dist.all_sum(torch.cat([self.sums, seen])).tolist()
        return dict(p, loss_sum=loss, correct=acc, seen=int(seen), nonfinite=int(current)), longest
