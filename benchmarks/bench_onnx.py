"""Latency of full-size InceptionV3 ported to ONNX, in onnxruntime, beside TensorFlow and PyTorch.

    python benchmarks/bench_onnx.py [--checkpoint PREFIX] [--batches 1 8] [--repeat 20] [--threads N]

One process runs the same network three ways on the same weights and input: the ONNX model this
package writes, in onnxruntime (CPU); TF-Slim's own graph in a ``tf.compat.v1.Session`` (the
reference); and PyTorch: the table-built module of ``converter.nets.torch`` where present, else
torchvision's ``inception_v3`` loaded with the converted state dict. Every runtime gets the same
thread count. Each contender's outputs are checked against TensorFlow's first (a fast wrong
network is no result); then the contenders take turns for ``--repeat`` timed runs after warm-up, and
the median of each is reported, with ratios to onnxruntime. The checkpoint is generated once into ``.cache/bench/`` (TensorFlow needed).
"""

import argparse
import os
import statistics
import time

import numpy as np

# torch's native libraries must load before TensorFlow's in one process
import torch

from _common import CACHE, full_checkpoint

from converter import mapping, oracle, reference
from converter.checkpoint import open_checkpoint
from converter.writers import onnx as onnx_writer

ARCHITECTURE = "inception_v3"
WARMUP = 3
# torchvision's module returns logits in eval mode; the table's module every end point
TORCHVISION_OPTIONS = {"weights": None, "aux_logits": True, "init_weights": False, "transform_input": False}


def _shapes(ckpt):
    return {name: ckpt.info(name).shape for name in ckpt.names()}


def onnxruntime_runner(ckpt, table, threads, workdir):
    import onnxruntime

    plan = mapping.plan(_shapes(ckpt), table, "onnx")
    path = workdir / "inception_v3.onnx"
    onnx_writer.save_onnx(plan, ckpt.read, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(images):
        return session.run(["Logits"], {onnx_writer.INPUT_NAME: images.transpose(onnx_writer.NHWC_TO_NCHW)})[0]

    return f"onnxruntime {onnxruntime.__version__} (CPU, opset {onnx_writer.DEFAULT_OPSET})", run


def tensorflow_runner(prefix, threads):
    tf, _ = reference.import_tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3])
        logits, _ = reference.build_network(ARCHITECTURE, images)
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
        session = tf.compat.v1.Session(graph=graph, config=config)
        tf.compat.v1.train.Saver().restore(session, str(prefix))

    def run(batch):
        return session.run(logits, {images: batch})[:, 1:]  # background class dropped, as the ports do

    return f"TensorFlow {tf.__version__} (TF-Slim graph, tf.compat.v1.Session)", run


def torch_runner(ckpt, table, threads):
    torch.set_num_threads(threads)
    plan = mapping.plan(_shapes(ckpt), table, "torch")
    state = {key: torch.from_numpy(np.array(value)) for key, value in plan.tensors(ckpt.read)}
    try:
        from converter.nets import torch as slim_torch
    except ImportError:
        slim_torch = None
    if slim_torch is not None:
        module = slim_torch.build(plan, state, device="cpu")
        name = "converter.nets.torch (table-built)"

        def logits(x):
            return module(x)["Logits"]
    else:
        import torchvision

        module = torchvision.models.inception_v3(**TORCHVISION_OPTIONS)
        module.load_state_dict(state, strict=True)
        module.eval()
        name = "torchvision inception_v3 (count_include_pad=True at borders)"
        logits = module

    def run(images):
        with torch.inference_mode():
            return logits(torch.from_numpy(np.ascontiguousarray(images.transpose(onnx_writer.NHWC_TO_NCHW)))).numpy()

    return f"PyTorch {torch.__version__}, {name}", run


def median_ms(runs, images, repeat):
    """Median milliseconds per contender; contenders take turns, so a shared machine's load hits all alike."""
    for run in runs.values():
        for _ in range(WARMUP):
            run(images)
    times = {key: [] for key in runs}
    for _ in range(repeat):
        for key, run in runs.items():
            start = time.perf_counter()
            run(images)
            times[key].append(time.perf_counter() - start)
    return {key: 1e3 * statistics.median(values) for key, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a full-size InceptionV3 checkpoint (default: generate one)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per contender and batch; the median counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for every runtime")
    args = parser.parse_args()

    prefix = full_checkpoint(args.checkpoint)
    table = mapping.load_table(ARCHITECTURE)
    workdir = CACHE.parent
    workdir.mkdir(parents=True, exist_ok=True)
    with open_checkpoint(prefix) as ckpt:
        contenders = {
            "onnxruntime": onnxruntime_runner(ckpt, table, args.threads, workdir),
            "tensorflow": tensorflow_runner(prefix, args.threads),
            "torch": torch_runner(ckpt, table, args.threads),
        }
    rng = np.random.default_rng(0)
    print(f"InceptionV3 299x299, float32, {args.threads} threads, median of {args.repeat} runs")
    for key, (name, _) in contenders.items():
        print(f"  {key:12s} {name}")
    header = f"{'batch':>5s} " + " ".join(f"{key + ' ms':>16s}" for key in contenders)
    print(header + f" {'tf/ort':>8s} {'torch/ort':>9s}")
    for batch in args.batches:
        images = rng.uniform(-1, 1, size=(batch, 299, 299, 3)).astype(np.float32)
        want = contenders["tensorflow"][1](images)
        for key, (_, run) in contenders.items():
            result = oracle.compare(want, run(images))
            if not result.ok:
                print(f"  warning: {key} differs from TensorFlow by {result.max_abs:.2e} (bound {result.bound:.2e})")
        ms = median_ms({key: run for key, (_, run) in contenders.items()}, images, args.repeat)
        row = f"{batch:5d} " + " ".join(f"{value:16.1f}" for value in ms.values())
        print(row + f" {ms['tensorflow'] / ms['onnxruntime']:8.2f} {ms['torch'] / ms['onnxruntime']:9.2f}")


if __name__ == "__main__":
    main()
