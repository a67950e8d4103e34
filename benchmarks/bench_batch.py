"""``ckpt-convert batch`` throughput: models per minute at ``-j 1`` and ``-j 2`` on one tree, and their ratio.

The tree holds copies of the small bundled checkpoint (V2), each in its own folder. Every run is the
command line in a fresh process into an empty output directory, so worker start-up and imports count.

    .venv/bin/python benchmarks/bench_batch.py [--copies 8] [--to torch,onnx] [--repeats 1]
"""

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "inception_v3" / "model.ckpt"
JOBS = (1, 2)
SECONDS_PER_MINUTE = 60


def make_tree(root, copies):
    """``root/mNN/model.ckpt.*``: ``copies`` copies of the bundled V2 checkpoint."""
    for i in range(copies):
        folder = root / f"m{i:02d}"
        folder.mkdir(parents=True)
        for path in FIXTURE.parent.glob(FIXTURE.name + ".*"):
            shutil.copy(path, folder / path.name)
    return root


def run(tree, outdir, jobs, targets):
    """Seconds one batch takes, from an empty output directory."""
    shutil.rmtree(outdir, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "converter", "batch", str(tree), "-o", str(outdir), "--to", targets,
                    "-j", str(jobs)], check=True, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--to", dest="targets", default="torch,onnx")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as scratch:
        tree = make_tree(pathlib.Path(scratch) / "tree", args.copies)
        print(f"{args.copies} copies of {FIXTURE.name} to {args.targets}; median of {args.repeats} fresh-process runs")
        rates = {}
        for jobs in JOBS:
            seconds = statistics.median(run(tree, pathlib.Path(scratch) / "out", jobs, args.targets)
                                        for _ in range(args.repeats))
            rates[jobs] = args.copies / seconds * SECONDS_PER_MINUTE
            print(f"-j {jobs}: {seconds:6.2f} s, {rates[jobs]:6.1f} models/min")
        print(f"-j {JOBS[-1]} / -j {JOBS[0]}: {rates[JOBS[-1]] / rates[JOBS[0]]:.2f}x")


if __name__ == "__main__":
    main()
