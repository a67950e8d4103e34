"""How far float16 and bfloat16 ports drift from TF-Slim, per architecture, against the reduced-precision bound.

For every built-in architecture's full-size test fixture (generated and cached by the test suite's
``tests/conftest.py``; ``CKPT_CONVERT_TEST_CACHE`` points at the cache), each dtype's torch port is run in
the exact module (weights rounded, compute float32, as ``verify`` runs it) and the float16 ONNX port in
onnxruntime (compute float16), on the fixture's golden input. Printed per port: the network's depth,
the worst end point's max |delta| / max(1, max|ref|), that over unit roundoff x sqrt(depth) (the model
behind ``oracle.atol_for``), the depth bound, and the worst end point's max |delta| over the whole bound
``verify`` applies (the depth bound, and at least ``oracle.DRIFT_FACTOR`` x the network's measured drift,
``converter.sensitivity``): under 1 passes. ``inf``: float16 overflowed (activations above 65504).

    .venv/bin/python benchmarks/bench_reduced_precision.py [ARCHITECTURE ...]
"""

import argparse
import math
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from converter import reference  # noqa: E402

reference.preload_before_tensorflow()

import conftest  # noqa: E402
from converter import mapping, oracle, sensitivity  # noqa: E402
from converter.checkpoint import open_checkpoint  # noqa: E402
from converter.api import convert, load  # noqa: E402

TORCH_DTYPES = ("float16", "bfloat16")


def fixture(name):
    if name == "inception_v3":
        return conftest._make_cached("inception_v3_full", depth_multiplier=1.0, kinds=("v2",))
    return conftest._make_cached(f"{name}_full", architecture=name, kinds=("v2",), **conftest.GENERATED[name])


def worst(golden, outputs, atol, floors):
    """The worst end point: ``(name, max|delta| / max(1, max|ref|))``, and the worst max|delta| / its bound."""
    found, verdicts = [], []
    for name, ref in golden.items():
        if name not in outputs:
            continue
        out = np.asarray(outputs[name], dtype=np.float64)
        if out.shape != ref.shape and ref.shape[-1] == out.shape[-1] + 1:
            ref = ref[..., 1:]  # the port dropped the background class
        delta = float(np.abs(out - ref).max())
        found.append((name, delta / max(1.0, np.abs(ref).max())))
        verdicts.append(delta / oracle.bound(ref, atol, oracle.DRIFT_FACTOR * floors[name]))
    return max(found, key=lambda pair: pair[1]), max(verdicts)


def torch_outputs(path, images):
    import torch

    with torch.no_grad():
        points = load(path, end_points=True)(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return {k: v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy() for k, v in points.items()}


def onnx_outputs(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": images.astype(np.float16)})))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("architectures", nargs="*", default=["inception_v3", *conftest.GENERATED])
    args = parser.parse_args()
    print(f"{'architecture':<14} {'depth':>5} {'port':<16} {'end point':<10} {'drift':>9} {'/(u sqrt L)':>11} {'bound':>9} {'/verify':>8}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.architectures:
            found = fixture(name)
            depth = oracle.depth(mapping.load_table(name).graph)
            golden, images = found.golden(), found.input
            runs = [(f"torch {dtype}", dtype, lambda dtype=dtype: torch_outputs(
                convert(found.v2, output=pathlib.Path(scratch) / f"{name}-{dtype}.pth", dtype=dtype).output, images))
                for dtype in TORCH_DTYPES]
            points = tuple(point for point in golden if point in mapping.load_table(name).facts.end_points)
            runs.append(("onnx float16", "float16", lambda: onnx_outputs(
                convert(found.v2, output=pathlib.Path(scratch) / f"{name}.onnx", dtype="float16", outputs=points,
                        input_layout="nhwc", input_size=images.shape[1:3]).output, images)))
            plan = convert(found.v2, to="torch", dry_run=True).plan
            for label, dtype, run in runs:
                atol = oracle.atol_for([dtype], depth)
                floors = sensitivity.drift(plan, open_checkpoint(found.v2).read, images, dtype,
                                           activations=label.startswith("onnx"))
                (point, drift), verdict = worst(golden, run(), atol, floors)
                unit = oracle.UNIT_ROUNDOFF[dtype] * math.sqrt(depth)
                print(f"{name:<14} {depth:>5} {label:<16} {point:<10} {drift:9.2e} {drift / unit:11.2f} "
                      f"{atol:9.2e} {verdict:8.2f}", flush=True)


if __name__ == "__main__":
    main()
