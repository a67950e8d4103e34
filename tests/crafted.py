"""Inputs crafted byte by byte from the formats' own rules, and a harness that runs the command line
on them in a child process under a memory and a time limit.

Checkpoints: LevelDB-style tables with valid block checksums (so the parsers, not the CRC, meet
what they hold), BundleEntryProto/SavedTensorSlices values, V2 data files. Mapping tables: a tiny
architecture with every target. Test-only.
"""

import json
import os
import pathlib
import resource
import struct
import subprocess
import sys

import cramjam
import ml_dtypes
import numpy as np

from converter._protobuf import encode_varint, tag
from converter.checkpoint import _crc
from converter.checkpoint._slices import slice_key
from converter.checkpoint._table import FOOTER_SIZE, TABLE_MAGIC

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64, DT_BFLOAT16, DT_HALF = 1, 2, 3, 7, 9, 14, 19
MIB = 1 << 20


# --- protobuf wire format


def varint(value):
    # negative numbers as protobuf writes int64: two's complement, ten bytes
    return encode_varint(value % (1 << 64))


def field(number, value):
    """An int as a varint field, bytes as a length-delimited one."""
    if isinstance(value, int):
        return tag(number, VARINT) + varint(value)
    return tag(number, BYTES) + varint(len(value)) + bytes(value)


def shape_proto(dims):
    return b"".join(field(2, field(1, size)) for size in dims)


def slice_proto(extents):
    """TensorSliceProto; a length of -1 ("all") is written by leaving the length out, as TensorFlow does."""
    return b"".join(field(1, field(1, start) + (field(2, length) if length != -1 else b"")) for start, length in extents)


def header_proto(num_shards=1):
    return field(1, num_shards) + field(3, field(1, 1))


def entry_proto(dtype=DT_FLOAT, shape=(), shard=0, offset=0, size=0, crc=0, slices=()):
    """BundleEntryProto (crc32c already masked)."""
    out = field(1, dtype) + field(2, shape_proto(shape)) + field(3, shard) + field(4, offset) + field(5, size)
    out += tag(6, FIXED32) + struct.pack("<I", crc)
    return out + b"".join(field(7, slice_proto(extents)) for extents in slices)


# --- tables and checkpoints


def build_table(entries, compression=0):
    """A table as TensorFlow's TableBuilder lays it out: one data block (no prefix sharing, one
    restart point), an empty metaindex block, an index block and the footer."""
    out = bytearray()

    def block(contents, kind=0):
        if kind:
            contents = bytes(cramjam.snappy.compress_raw(contents))
        offset = len(out)
        typed = contents + bytes([kind])
        out.extend(typed + struct.pack("<I", _crc.mask(_crc.crc32c(typed))))
        return varint(offset) + varint(len(contents))

    restarts = struct.pack("<II", 0, 1)
    data = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries) + restarts
    data_handle = block(data, compression)
    meta_handle = block(struct.pack("<I", 0))
    last = entries[-1][0]
    index_handle = block(varint(0) + varint(len(last)) + varint(len(data_handle)) + last + data_handle + restarts)
    footer = meta_handle + index_handle
    return bytes(out + footer + bytes(FOOTER_SIZE - 8 - len(footer)) + TABLE_MAGIC.to_bytes(8, "little"))


def write_bundle(prefix, entries, data=b"", num_shards=1):
    """A V2 checkpoint at ``prefix`` from ``{name (bytes): BundleEntryProto}`` and shard 0's bytes."""
    prefix = pathlib.Path(prefix)
    rows = sorted([(b"", header_proto(num_shards)), *entries.items()])
    pathlib.Path(f"{prefix}.index").write_bytes(build_table(rows))
    pathlib.Path(f"{prefix}.data-00000-of-{num_shards:05d}").write_bytes(data)
    return prefix


def tensor_entries(tensors, data=b""):
    """``({name: entry}, data)`` for float32/int32 arrays laid out one after another after ``data``."""
    entries, data = {}, bytearray(data)
    dtypes = {np.dtype(np.float32): DT_FLOAT, np.dtype(np.int32): DT_INT32, np.dtype(np.int64): DT_INT64,
              np.dtype(np.float64): DT_DOUBLE, np.dtype(np.float16): DT_HALF, np.dtype(ml_dtypes.bfloat16): DT_BFLOAT16}
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        crc = _crc.mask(_crc.crc32c(raw))
        name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
        entries[name] = entry_proto(dtypes[array.dtype], array.shape, 0, len(data), len(raw), crc)
        data += raw
    return entries, bytes(data)


def write_tensors(prefix, tensors):
    """A well-formed V2 checkpoint holding ``tensors``."""
    entries, data = tensor_entries(tensors)
    return write_bundle(prefix, entries, data)


def partitioned_entries(name, shape, slices, part_entries):
    """The full entry of a partitioned float32 tensor and its slice entries (``extents -> entry``)."""
    entries = {name.encode(): entry_proto(DT_FLOAT, shape, slices=slices)}
    for extents, entry in part_entries.items():
        entries[slice_key(name.encode(), extents)] = entry
    return entries


def write_v1(path, tensors):
    """A V1 checkpoint from ``[(name, dtype, shape, TensorProto bytes of its one full slice)]``."""
    full = lambda shape: tuple((0, -1) for _ in shape)  # noqa: E731
    metas = [field(1, name.encode()) + field(2, shape_proto(shape)) + field(3, dtype) + field(4, slice_proto(full(shape)))
             for name, dtype, shape, _ in tensors]
    rows = [(b"", field(1, b"".join(field(1, meta) for meta in metas)))]
    for name, _, shape, proto in tensors:
        saved = field(1, name.encode()) + field(2, slice_proto(full(shape))) + field(3, proto)
        rows.append((slice_key(name.encode(), full(shape)), field(2, saved)))
    pathlib.Path(path).write_bytes(build_table(sorted(rows)))
    return pathlib.Path(path)


# --- a tiny architecture: a conv with batch norm, a global pool and a classifier, every target

TINY_SCOPE = "Tiny"
TINY_TABLE = """
schema: 2
architecture: tiny
scope: Tiny
detect: [Conv2d_1a_3x3/weights]
facts:
  num_classes: 5
  background_class: 0
  input: {height: 8, width: 8, channels: 3, range: [-1.0, 1.0]}
  batch_norm_epsilon: 0.001
  end_points: [Conv, Logits]
targets:
  torch: {}
  onnx: {}
  keras: {application: Tiny, order: [conv2d, batch_normalization, predictions]}
kinds:
  conv_bn:
    compute: {op: conv, batch_norm: true}
    params:
      weights: [kh, kw, in, out]
      BatchNorm/beta: [out]
      BatchNorm/moving_mean: [out]
      BatchNorm/moving_variance: [out]
    torch:
      conv.weight: {from: weights, transform: hwio_to_oihw}        # [kh, kw, in, out] -> [out, in, kh, kw]
      bn.weight: {fill: 1.0, shape: [out]}
      bn.bias: {from: BatchNorm/beta}
      bn.running_mean: {from: BatchNorm/moving_mean}
      bn.running_var: {from: BatchNorm/moving_variance}
      bn.num_batches_tracked: {fill: 0, shape: [], dtype: int64}
    keras:
      conv2d/kernel: {from: weights}
      batch_normalization/beta: {from: BatchNorm/beta}
      batch_normalization/moving_mean: {from: BatchNorm/moving_mean}
      batch_normalization/moving_variance: {from: BatchNorm/moving_variance}
    onnx:
      weights: {from: weights, transform: hwio_to_oihw}            # [kh, kw, in, out] -> [out, in, kh, kw]
      BatchNorm/gamma: {fill: 1.0, shape: [out]}
      BatchNorm/beta: {from: BatchNorm/beta}
      BatchNorm/moving_mean: {from: BatchNorm/moving_mean}
      BatchNorm/moving_variance: {from: BatchNorm/moving_variance}
  logits:
    compute: {op: linear}
    params:
      weights: [1, 1, in, classes]
      biases: [classes]
    torch:
      weight: {from: weights, transform: conv1x1_to_linear, classes: 0}   # [1, 1, in, classes] -> [classes, in]
      bias: {from: biases, classes: 0}
    keras:
      dense/kernel: {from: weights, transform: conv1x1_to_dense, classes: 1}   # -> [in, classes]
      dense/bias: {from: biases, classes: 0}
    onnx:
      weights: {from: weights, transform: conv1x1_to_linear, classes: 0}  # [1, 1, in, classes] -> [classes, in]
      biases: {from: biases, classes: 0}
graph:
  - {name: Conv, layer: Conv2d_1a_3x3, stride: 2, activation: relu}
  - {avg_pool: global}
  - name: Logits
    nodes:
      - {flatten: true}
      - {layer: Conv2d_1c_1x1}
layers:
  Conv2d_1a_3x3: {kind: conv_bn, torch: conv, onnx: Conv2d_1a_3x3, keras: {conv2d: conv2d, batch_normalization: batch_normalization}}
  Logits/Conv2d_1c_1x1: {kind: logits, torch: fc, onnx: Logits/Conv2d_1c_1x1, keras: {dense: predictions}}
"""


def tiny_tensors(seed=0, classes=5, weights_dtype=np.float32):
    rng = np.random.default_rng(seed)
    conv = "Tiny/Conv2d_1a_3x3/"
    return {
        conv + "weights": rng.normal(size=(3, 3, 3, 4)).astype(weights_dtype),
        conv + "BatchNorm/beta": rng.normal(size=4).astype(np.float32),
        conv + "BatchNorm/moving_mean": rng.normal(size=4).astype(np.float32),
        conv + "BatchNorm/moving_variance": rng.uniform(0.5, 1.5, size=4).astype(np.float32),
        "Tiny/Logits/Conv2d_1c_1x1/weights": rng.normal(size=(1, 1, 4, classes)).astype(np.float32),
        "Tiny/Logits/Conv2d_1c_1x1/biases": rng.normal(size=classes).astype(np.float32),
    }


def tiny(directory, **options):
    """A tiny checkpoint and its table in ``directory``: ``(checkpoint prefix, table path)``."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = directory / "tiny.yaml"
    table.write_text(TINY_TABLE)
    return write_tensors(directory / "tiny.ckpt", tiny_tensors(**options)), table


# --- the command line in a child process, under limits


def run_limited(cases, *, memory=1 << 30, seconds=120, cwd=None):
    """Run ``ckpt-convert`` once per case (an argv list, or ``{"discover": [source, ...]}`` for what
    ``batch`` does before it starts a worker) in one child process limited to ``memory``
    bytes of address space and ``seconds``; returns one result per case: ``code``, ``stderr``,
    ``unexpected`` (a traceback that escaped ``cli.main``), ``seconds``; and the child's peak RSS.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
               OPENBLAS_NUM_THREADS="1")  # BLAS reserves address space per thread, which the limit counts
    env.pop("CKPT_CONVERT_DEBUG", None)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    done = subprocess.run(
        [sys.executable, "-c", "import crafted; crafted._child()"], input=json.dumps(cases), capture_output=True,
        text=True, timeout=seconds, preexec_fn=limit, cwd=cwd or ROOT, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    return report["results"], report["peak_bytes"]


def _child():
    import contextlib
    import io
    import time
    import traceback

    from converter import cli

    results = []
    for argv in json.loads(sys.stdin.read()):
        err, out = io.StringIO(), io.StringIO()
        started, code, unexpected = time.perf_counter(), 0, None
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                if isinstance(argv, dict):
                    _discover(argv["discover"])
                else:
                    cli.main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # what the command line let escape: the test fails on it
            code, unexpected = 1, traceback.format_exc()
        results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "unexpected": unexpected,
                        "seconds": time.perf_counter() - started})
    print(json.dumps({"results": results, "peak_bytes": _peak_rss()}))


def _peak_rss():
    # this process's own high-water mark: getrusage's would include the RSS of the process that forked it
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _discover(sources):
    # what `ckpt-convert batch` does with its sources before it starts a worker, reported as the
    # command line reports it
    from converter import batch
    from converter.errors import ConvertError

    try:
        batch.discover(sources)
    except ConvertError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


def run_one(case, **limits):
    """``run_limited`` for one case: ``(result, peak RSS)``."""
    (result,), peak = run_limited([case], **limits)
    return result, peak


def files(directory):
    """The names in ``directory``, sorted."""
    return sorted(p.name for p in pathlib.Path(directory).iterdir())


def assert_error(result, expected=None):
    """A failed command: non-zero exit, an ``error:`` line (and at most an indented list), no traceback."""
    assert result["unexpected"] is None, result["unexpected"]
    assert result["code"] not in (0, None), result
    lines = result["stderr"].rstrip("\n").split("\n")
    assert lines[0].startswith("error: "), result["stderr"]
    assert all(line.startswith("  ") for line in lines[1:]) and len(lines) <= 22, result["stderr"]
    # a bound that holds never meets the memory limit: running out of memory is a failure here
    assert not any(word in result["stderr"] for word in ("Traceback", "MemoryError", "not enough memory")), result["stderr"]
    if expected is not None:
        assert expected in lines[0] or expected in result["stderr"], result["stderr"]
