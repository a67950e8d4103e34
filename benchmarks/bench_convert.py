"""Full-size InceptionV3 to torch: ckpt-convert against the naive port, each in a fresh process.

The naive port is what one-off scripts do: ``tf.train.load_checkpoint``, rename and transform every
tensor, ``torch.save`` (or ``safetensors.torch.save_file``). Every run is a new interpreter, so
imports count; wall time is measured around it and peak RSS is the child's own ``ru_maxrss``.

    .venv/bin/python benchmarks/bench_convert.py [--repeats 3]

Generates the checkpoint with fixtures/make_fixtures.py into .cache/bench/ when it is absent.
"""

import argparse
import statistics
import subprocess
import sys
import time

from _common import CACHE, ROOT, full_checkpoint

BENCH = CACHE.parent
KIB = 1024
MB = 1e6
# targets: how much faster than the naive port, and peak memory against the checkpoint's data size
TARGET_SPEEDUP = {".pth": 5.0, ".safetensors": 10.0}
TARGET_RSS_RATIO = 2.5

PEAK_RSS = "import resource; print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"

OURS = """
from converter.convert import convert
convert({checkpoint!r}, "torch", {output!r}, force=True)
"""

# torch loads before TensorFlow in one process: the other order segfaults
NAIVE = """
import torch
import tensorflow as tf
from converter import mapping
reader = tf.train.load_checkpoint({checkpoint!r})
plan = mapping.plan(reader.get_variable_to_shape_map(), mapping.load_table("inception_v3"), "torch")
state = {{key: torch.from_numpy(value.copy()) for key, value in plan.tensors(reader.get_tensor)}}
if {output!r}.endswith(".safetensors"):
    from safetensors.torch import save_file
    save_file(state, {output!r})
else:
    torch.save(state, {output!r})
"""


def data_size(checkpoint):
    """Bytes of the checkpoint's data shards."""
    return sum(p.stat().st_size for p in checkpoint.parent.glob(checkpoint.name + ".data-*"))


def measure(code):
    """``(seconds, peak RSS bytes)`` of ``code`` run in a fresh interpreter."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code + PEAK_RSS], check=True, cwd=ROOT,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rss = int(result.stdout.split("peak_rss_kib")[-1]) * KIB
    return seconds, rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checkpoint = full_checkpoint()
    size = data_size(checkpoint)
    print(f"checkpoint {checkpoint}: {size / MB:.1f} MB of data; median of {args.repeats} fresh-process runs")
    failures = []
    for suffix in (".pth", ".safetensors"):
        runs = {}
        for label, template in (("ckpt-convert", OURS), ("naive", NAIVE)):
            output = str(BENCH / f"{label}{suffix}")
            code = template.format(checkpoint=str(checkpoint), output=output)
            samples = [measure(code) for _ in range(args.repeats)]
            runs[label] = (statistics.median(s for s, _ in samples), max(r for _, r in samples))
        (ours, ours_rss), (naive, naive_rss) = runs["ckpt-convert"], runs["naive"]
        speedup = naive / ours
        print(f"{suffix:13s} ckpt-convert {ours:6.2f} s, "
              f"peak RSS {ours_rss / MB:6.0f} MB ({ours_rss / size:.2f}x data) | "
              f"naive {naive:6.2f} s, peak RSS {naive_rss / MB:6.0f} MB ({naive_rss / size:.2f}x data) | "
              f"{speedup:.1f}x faster (target {TARGET_SPEEDUP[suffix]:.0f}x)")
        if speedup < TARGET_SPEEDUP[suffix]:
            failures.append(f"{suffix}: {speedup:.1f}x faster, target {TARGET_SPEEDUP[suffix]:.0f}x")
        if ours_rss > TARGET_RSS_RATIO * size:
            failures.append(f"{suffix}: peak RSS {ours_rss / size:.2f}x data, target {TARGET_RSS_RATIO}x")
    if failures:
        print("missed: " + "; ".join(failures))
        sys.exit(1)
    print("all targets met")


if __name__ == "__main__":
    main()
