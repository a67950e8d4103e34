"""The ONNX writer against the torch writer on full-size InceptionV3, this tree's and a base revision's.

Every conversion is ``convert`` in a fresh interpreter (imports count): wall time measured around the
process, peak RSS its own ``VmHWM`` (Linux). Median of ``--repeats``.

    .venv/bin/python benchmarks/bench_onnx_writer.py [--checkpoint PREFIX] [--base 16620ab] [--repeats 3]

Generates the checkpoint with fixtures/make_fixtures.py into .cache/bench/ when it is absent.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from _baseline import code_roots, environment
from _common import full_checkpoint

MIB = 2**20
DEFAULT_BASE = "16620ab"
OUTPUTS = {"torch": "model.pth", "onnx": "model.onnx"}

CONVERT = """
import sys
from converter.convert import convert
convert(sys.argv[1], sys.argv[2], sys.argv[3], force=True)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024)
"""


def measure(root, checkpoint, target, output):
    """(seconds, peak RSS bytes) of one conversion in a fresh process with the code at ``root``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CONVERT, str(checkpoint), target, str(output)], cwd=root,
                          env=environment(root), capture_output=True, text=True, check=True)
    return time.perf_counter() - start, int(done.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a full-size InceptionV3 checkpoint prefix")
    parser.add_argument("--base", default=DEFAULT_BASE, help="the revision to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checkpoint = full_checkpoint(args.checkpoint)
    data = sum(path.stat().st_size for path in checkpoint.parent.glob(checkpoint.name + ".data-*"))
    print(f"full-size InceptionV3 ({data / 1e6:.1f} MB of data); median of {args.repeats} fresh processes")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-writer-") as scratch:
        for label, root in code_roots(args.base).items():
            found = {}
            for target, name in OUTPUTS.items():
                runs = [measure(root, checkpoint, target, f"{scratch}/{name}") for _ in range(args.repeats)]
                found[target] = (statistics.median(s for s, _ in runs), statistics.median(p for _, p in runs))
                seconds, peak = found[target]
                print(f"{label:<16} --to {target:<6} {seconds:6.2f} s  peak RSS {peak / MIB:6.0f} MiB "
                      f"({peak / data:.1f}x data)", flush=True)
            print(f"{label:<16} onnx / torch: {found['onnx'][0] / found['torch'][0]:.2f}x time, "
                  f"{found['onnx'][1] / found['torch'][1]:.2f}x peak RSS", flush=True)


if __name__ == "__main__":
    main()
