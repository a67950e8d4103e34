"""``ckpt-convert batch --verify`` throughput: models per minute at ``-j 1`` and ``-j 2``, against a base revision.

The tree holds copies of the small bundled checkpoint, each in its own folder. Every run is the command
line in a fresh process into an empty output directory (worker start-up, imports and the first
reference build count); the base revision's code runs the same command from a ``git worktree``.

    .venv/bin/python benchmarks/bench_verify.py [--copies 16] [--base 16620ab] [--repeats 1]

The default base is the last revision that built TF-Slim's reference graph afresh for every model.
"""

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _baseline import code_roots, environment
from bench_batch import make_tree

JOBS = (1, 2)
SECONDS_PER_MINUTE = 60
DEFAULT_BASE = "16620ab"


def run(root, tree, outdir, jobs, targets):
    """Seconds one verified batch takes with the code at ``root``, from an empty output directory."""
    shutil.rmtree(outdir, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "converter", "batch", str(tree), "-o", str(outdir), "--to", targets,
                           "--verify", "-j", str(jobs)], cwd=root, env=environment(root), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"batch failed with the code at {root}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--to", dest="targets", default="torch,onnx")
    parser.add_argument("--base", default=DEFAULT_BASE, help="the revision to compare with")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    roots = code_roots(args.base)
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as scratch:
        tree = make_tree(pathlib.Path(scratch) / "tree", args.copies)
        print(f"batch --verify: {args.copies} copies of the small InceptionV3 to {args.targets}; "
              f"median of {args.repeats} fresh-process runs")
        rates = {}
        for jobs in JOBS:
            for label, root in roots.items():
                seconds = statistics.median(run(root, tree, pathlib.Path(scratch) / "out", jobs, args.targets)
                                            for _ in range(args.repeats))
                rates[label, jobs] = args.copies / seconds * SECONDS_PER_MINUTE
                print(f"-j {jobs} {label:<16} {seconds:7.1f} s {rates[label, jobs]:7.1f} models/min", flush=True)
            base, ours = (rates[label, jobs] for label in roots)
            print(f"-j {jobs} speed-up: {ours / base:.1f}x", flush=True)


if __name__ == "__main__":
    main()
