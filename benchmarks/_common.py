"""What the benchmarks share: the full-size InceptionV3 checkpoint they measure on."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench" / "inception_v3_full"


def full_checkpoint(prefix=None):
    """``prefix`` if given, else the full-size checkpoint, generated once with TensorFlow (about a minute)."""
    if prefix is not None:
        return pathlib.Path(prefix)
    prefix = CACHE / "model.ckpt"
    if not prefix.with_name("model.ckpt.index").is_file():
        print(f"generating the full-size checkpoint into {CACHE} (once) ...", file=sys.stderr)
        command = [sys.executable, str(ROOT / "fixtures" / "make_fixtures.py"), "--depth-multiplier", "1.0",
                   "--kinds", "v2", "--out", str(CACHE)]
        subprocess.run(command, check=True, cwd=ROOT)
    return prefix
