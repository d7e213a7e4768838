"""How reliably an elastic torchrun job's workers meet again after one is killed: two
agents on this host (c10d rendezvous, gloo, one process each) run tests/elastic_worker.py,
which joins the job as train.py does; rank 1 SIGKILLs itself on its first --kills starts,
and every restart has the rank that starts second come --delay seconds late.

    python benchmarks/elastic.py                      # 10 jobs x 3 restarts, fixed and plain
    python benchmarks/elastic.py --jobs 20 --burn 2   # with 2 busy-looping processes beside

"fixed" joins through runtime.init_distributed (runtime.fresh_store); "plain" through
torch's own env:// set-up in torchrun's store, which keeps the killed round's addresses.
A job counts as finished when both agents exit 0 after every restart; one still running
after --timeout seconds is killed and counted as hung.
"""
import argparse
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import elastic_worker  # noqa: E402


def burn(stop_at):
    while time.monotonic() < stop_at:
        pass


def run_jobs(mode, args):
    finished = failed = hung = 0
    seconds = []
    for _ in range(args.jobs):
        with tempfile.TemporaryDirectory() as folder:
            codes, _, took = elastic_worker.launch(folder, args.kills, plain=mode == "plain",
                                                   timeout=args.timeout,
                                                   env={"DELAY": str(args.delay)})
        if codes == [0, 0]:
            finished += 1
            seconds.append(took)
        elif None in codes:
            hung += 1
        else:
            failed += 1
        print(f"  {mode}: job {finished + failed + hung}/{args.jobs}: exit codes {codes}, "
              f"{took:.1f} s", flush=True)
    mean = f"{sum(seconds) / len(seconds) / (args.kills + 1):.1f}" if seconds else "-"
    return f"| {mode} | {args.jobs} x {args.kills} | {finished} | {failed} | {hung} | {mean} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=3, help="restarts per job")
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=90, help="seconds a job may take")
    parser.add_argument("--burn", type=int, default=0, help="busy-looping processes beside")
    parser.add_argument("--modes", default="fixed,plain")
    args = parser.parse_args()
    burners = [multiprocessing.Process(target=burn, args=(time.monotonic() + 24 * 3600,),
                                       daemon=True) for _ in range(args.burn)]
    for b in burners:
        b.start()
    try:
        rows = [run_jobs(mode, args) for mode in args.modes.split(",")]
    finally:
        for b in burners:
            b.terminate()
    print(f"\n{os.cpu_count()} cores, {args.burn} burner(s), delay {args.delay} s")
    print("| join | jobs x restarts | finished | failed | hung | s per start |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
