"""Read every tensor of a full-size InceptionV3 slim checkpoint: our reader vs TensorFlow vs a plain read.

    python benchmarks/bench_read.py [--checkpoint PREFIX] [--repeat 5]

Each contender runs in a fresh interpreter; "end to end" is that process's wall time (start-up and
imports included), "read" the time of its read loop alone. The page cache is warmed first, so
both compare decoding, not the disk. The checkpoint (about 95 MB) is generated once into
``.cache/bench/`` with ``fixtures/make_fixtures.py`` (TensorFlow needed) and never committed.
"""

import argparse
import json
import subprocess
import sys
import time

from _common import ROOT, full_checkpoint

TARGET_END_TO_END = 10.0  # at least this many times faster than TensorFlow, imports included
TARGET_READ = 3.0  # the read loop within this factor of a plain read of the data file

# each prints {"read_s": seconds of the read loop, "bytes": bytes produced}
CONTENDERS = {
    "ours": """
import sys, time, json
from converter.checkpoint import open_checkpoint
start = time.perf_counter()
with open_checkpoint(sys.argv[1]) as ckpt:
    total = sum(ckpt.read(name).nbytes for name in ckpt)
print(json.dumps({"read_s": time.perf_counter() - start, "bytes": total}))
""",
    "tensorflow": """
import sys, time, json
import tensorflow as tf
start = time.perf_counter()
reader = tf.train.load_checkpoint(sys.argv[1])
total = sum(reader.get_tensor(name).nbytes for name in reader.get_variable_to_shape_map())
print(json.dumps({"read_s": time.perf_counter() - start, "bytes": total}))
""",
    "plain read": """
import sys, time, json, glob
start = time.perf_counter()
total = 0
for path in sorted(glob.glob(sys.argv[1] + ".data-*")):
    with open(path, "rb") as file:
        total += len(file.read())
print(json.dumps({"read_s": time.perf_counter() - start, "bytes": total}))
""",
}


def run(code, prefix):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(prefix)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"benchmark child failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, result["read_s"], result["bytes"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a V2 checkpoint prefix (default: generate the full-size InceptionV3)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender; the fastest counts")
    args = parser.parse_args()
    prefix = full_checkpoint(args.checkpoint)
    for path in prefix.parent.glob(prefix.name + ".*"):
        path.read_bytes()  # warm the page cache
    best = {}
    for _ in range(args.repeat):
        for name, code in CONTENDERS.items():
            wall, read, size = run(code, prefix)
            previous = best.get(name, (float("inf"), float("inf"), size))
            best[name] = (min(previous[0], wall), min(previous[1], read), size)
    megabytes = best["plain read"][2] / 1e6
    print(f"checkpoint: {prefix} ({megabytes:.1f} MB of data), best of {args.repeat} runs, warm cache")
    print(f"{'':12} {'end to end':>12} {'read loop':>12} {'MB read':>9}")
    for name, (wall, read, size) in best.items():
        print(f"{name:12} {wall:11.3f}s {read:11.4f}s {size / 1e6:9.1f}")
    end_to_end = best["tensorflow"][0] / best["ours"][0]
    read_ratio = best["ours"][1] / best["plain read"][1]
    print(f"end to end: ours is {end_to_end:.1f}x faster than TensorFlow (target >= {TARGET_END_TO_END:g}x)")
    print(f"read loop: ours takes {read_ratio:.2f}x a plain read of the data file (target <= {TARGET_READ:g}x)")


if __name__ == "__main__":
    main()
