"""A checkpoint's ``.meta`` graph to ONNX: ckpt-convert against ``tf2onnx --checkpoint``, full-size InceptionV3.

    python benchmarks/bench_meta.py --tf2onnx-python /path/to/venv/bin/python [--modes inference training]

tf2onnx is a benchmark-only dependency (``pip install 'ckpt-convert[bench-tf2onnx]'``, pinned, in an
environment of its own beside TensorFlow); ckpt-convert never imports it. Each converter runs in a
fresh process on the same checkpoint and ``model.ckpt.meta``: wall time and peak RSS of that process,
side by side. Both ONNX models then run in onnxruntime on a seeded batch, and each one's max |delta|
on the logits is measured against TF-Slim's own InceptionV3 built for inference on the checkpoint.

Two graphs of the same network and weights (the shared full-size checkpoint, ``_common.py``):
``inference`` (built with ``is_training=False``) and ``training`` (as a training script saves it:
batch norm with ``is_training=True``, live dropout, a loss, Momentum and a moving average; its
Saver saves the model's variables). ckpt-convert recovers the network of either at inference;
tf2onnx converts the graph as it is.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from _common import ROOT, full_checkpoint

BATCH = 2
SEED = 0
INPUT = "images"
LOGITS = "InceptionV3/Logits/SpatialSqueeze"
MODES = ("inference", "training")
OPSET = 17
# run a command in a fresh process and report its wall time and peak RSS (this wrapper's only child)
MEASURE = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
           "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "seconds = time.perf_counter() - start; "
           "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
           "print(done.returncode, seconds, peak); sys.stderr.write(done.stderr[-2000:] if done.returncode else '')")

WRITE_META = """
import sys
sys.path.insert(0, {root!r})
from converter import reference
tf, slim = reference.import_tensorflow()
tf.compat.v1.disable_control_flow_v2()
training = {training!r}
with tf.Graph().as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3], name={input!r})
    logits, end_points = reference.build_network("inception_v3", images, num_classes=1001, is_training=training)
    model_variables = tf.compat.v1.global_variables()
    if training:
        labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
        tf.compat.v1.losses.softmax_cross_entropy(tf.one_hot(labels, 1001), end_points["AuxLogits"], weights=0.4)
        step = tf.compat.v1.train.get_or_create_global_step()
        with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
            train = tf.compat.v1.train.MomentumOptimizer(0.01, 0.9).minimize(tf.compat.v1.losses.get_total_loss(), step)
        with tf.control_dependencies([train]):
            tf.compat.v1.train.ExponentialMovingAverage(0.999, num_updates=step).apply(model_variables)
    if training:
        # a training run's checkpoint: the weights, and the optimizer's slots, the averages and the step
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(var_list=model_variables).restore(session, {weights!r})
            tf.compat.v1.train.Saver().save(session, {prefix!r})
    else:
        tf.compat.v1.train.Saver(var_list=model_variables)
        tf.compat.v1.train.export_meta_graph(filename={prefix!r} + ".meta")
"""


def _measure(command):
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True)
    code, seconds, peak_kib = done.stdout.split()
    if int(code):
        raise SystemExit(f"{command[0]} failed:\n{done.stderr}")
    return float(seconds), int(peak_kib) * 1024


def _graph_dir(workdir, checkpoint, mode):
    # a checkpoint of the shared weights with a .meta of the network in `mode`: for inference, the shared
    # files beside the graph; for training, a checkpoint with every variable of the training graph
    folder = workdir / mode
    prefix = folder / "model.ckpt"
    if prefix.with_name("model.ckpt.meta").is_file():
        return prefix
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "inference":
        for path in checkpoint.parent.glob(f"{checkpoint.name}.*"):
            target = folder / path.name.replace(checkpoint.name, "model.ckpt", 1)
            if not target.exists():
                os.symlink(path.resolve(), target)
    script = WRITE_META.format(root=str(ROOT), training=mode == "training", input=INPUT, prefix=str(prefix),
                               weights=str(checkpoint))
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    return prefix


def _reference(checkpoint, images):
    from converter import reference

    return reference.run_reference(checkpoint, images, architecture="inception_v3", end_points=["Logits"])["Logits"]


def _onnx_logits(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    nhwc = model_input.shape[-1] == 3
    batch = images if nhwc else np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    outputs = session.run(None, {model_input.name: batch})
    return outputs[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf2onnx-python", required=True, type=pathlib.Path,
                        help="the Python of an environment with tf2onnx and TensorFlow")
    parser.add_argument("--checkpoint", help="a full-size InceptionV3 checkpoint (default: the shared one)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = parser.parse_args()
    checkpoint = full_checkpoint(args.checkpoint)
    workdir = ROOT / ".cache" / "bench" / "meta"
    images = np.random.default_rng(SEED).uniform(-1, 1, (BATCH, 299, 299, 3)).astype(np.float32)
    results = []
    for mode in args.modes:
        prefix = _graph_dir(workdir, checkpoint, mode)
        meta = prefix.with_name("model.ckpt.meta")
        outputs = {"ckpt-convert": prefix.with_name("ckpt_convert.onnx"), "tf2onnx": prefix.with_name("tf2onnx.onnx")}
        commands = {
            "ckpt-convert": [sys.executable, "-m", "converter", "--to", "onnx", prefix, "--mapping", meta,
                             "-o", outputs["ckpt-convert"], "--force"],
            "tf2onnx": [args.tf2onnx_python, "-m", "tf2onnx.convert", "--checkpoint", meta, "--inputs", f"{INPUT}:0",
                        "--outputs", f"{LOGITS}:0", "--output", outputs["tf2onnx"], "--opset", OPSET],
        }
        costs = {name: _measure(command) for name, command in commands.items()}
        results.append((mode, meta.stat().st_size, costs, outputs))
    reference = _reference(checkpoint, images)
    bound = float(1e-4 * max(1.0, np.abs(reference).max()))
    print(f"full-size InceptionV3, {checkpoint}; logits max |ref| {np.abs(reference).max():.3f}, "
          f"bound {bound:.2e} (1e-4 x max(1, max|ref|))")
    print(f"{'graph':<10} {'.meta':>8} {'converter':<13} {'wall s':>7} {'peak RSS':>10} {'max|d| logits':>14}")
    report = []
    for mode, size, costs, outputs in results:
        row = {"graph": mode, "meta_mib": round(size / 2 ** 20, 1)}
        for name, (seconds, peak) in costs.items():
            delta = float(np.abs(_onnx_logits(outputs[name], images) - reference).max())
            row[name] = {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2 ** 20), "max_abs_delta": delta}
            print(f"{mode:<10} {size / 2 ** 20:7.1f}M {name:<13} {seconds:7.2f} {peak / 2 ** 20:8.0f} MiB {delta:14.2e}")
        ours, theirs = row["ckpt-convert"], row["tf2onnx"]
        print(f"{'':<19} ckpt-convert {theirs['seconds'] / ours['seconds']:.1f}x faster, "
              f"{theirs['peak_rss_mib'] / ours['peak_rss_mib']:.1f}x less memory")
        report.append(row)
    if args.json:
        args.json.write_text(json.dumps({"bound": bound, "results": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
