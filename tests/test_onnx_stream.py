"""The ONNX writer streams each tensor into the file: the same bytes as onnx.save_model, in bounded memory."""

import os
import subprocess
import sys

import numpy as np
import pytest

from converter import mapping
from converter.checkpoint import open_checkpoint
from converter.convert import convert
from converter.errors import ConvertError, OutputExistsError
from converter.writers import onnx as onnx_writer

onnx = pytest.importorskip("onnx", reason="the ONNX target needs the onnx extra")
ort = pytest.importorskip("onnxruntime", reason="the ONNX target runs in onnxruntime")

# peak RSS of a fresh process writing full-size InceptionV3, per byte of its checkpoint's data
MAX_PEAK_PER_DATA_BYTE = 2.0


def _plan(checkpoint, **options):
    with open_checkpoint(checkpoint) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
    return mapping.plan(shapes, mapping.load_table("inception_v3"), "onnx", **options)


def _outputs(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = images.transpose(onnx_writer.NHWC_TO_NCHW)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {onnx_writer.INPUT_NAME: feed})))


@pytest.mark.parametrize("options", [{}, {"dtype": "float16"}, {"input_layout": "nhwc", "outputs": ["Mixed_7c"]}],
                         ids=["float32", "float16", "nhwc"])
def test_streamed_file_is_what_onnx_save_writes(small, tmp_path, options):
    plan = _plan(small.v2)
    with open_checkpoint(small.v2) as ckpt:
        onnx_writer.save_onnx(plan, ckpt.read, tmp_path / "streamed.onnx", **options)
        onnx.save_model(onnx_writer.build_model(plan, ckpt.read, **options), str(tmp_path / "in_memory.onnx"))
    assert (tmp_path / "streamed.onnx").read_bytes() == (tmp_path / "in_memory.onnx").read_bytes()
    onnx.checker.check_model(str(tmp_path / "streamed.onnx"), full_check=True)


def test_a_tensor_read_unlike_its_declaration_is_refused(small, tmp_path):
    plan = _plan(small.v2)
    with open_checkpoint(small.v2) as ckpt:
        def read(name):
            value = ckpt.read(name)
            return value[..., :-1] if name.endswith("Mixed_6b/Branch_0/Conv2d_0a_1x1/weights") else value

        with pytest.raises(ConvertError, match=r"Mixed_6b/Branch_0/Conv2d_0a_1x1/weights read as float32 .*declared"):
            onnx_writer.save_onnx(plan, read, tmp_path / "model.onnx")


def test_external_data_runs_as_the_inline_model(small, tmp_path):
    inline, external = tmp_path / "inline.onnx", tmp_path / "external.onnx"
    convert(small.v2, "onnx", inline)
    result = convert(small.v2, "onnx", external, external_data=True)
    data = tmp_path / "external.onnx.data"
    assert data.stat().st_size > 0.99 * inline.stat().st_size > 10 * external.stat().st_size
    assert result.bytes == external.stat().st_size + data.stat().st_size
    model = onnx.load(str(external), load_external_data=False)
    assert {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
            if entry.key == "location"} == {data.name}
    onnx.checker.check_model(str(external), full_check=True)
    expected, found = _outputs(inline, small.input), _outputs(external, small.input)
    assert expected.keys() == found.keys() and all(np.array_equal(expected[k], found[k]) for k in expected)
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".partial")] == []


def test_external_data_is_never_overwritten_without_force(small, tmp_path):
    output = tmp_path / "model.onnx"
    data = tmp_path / "model.onnx.data"
    data.write_bytes(b"someone else's")
    with pytest.raises(OutputExistsError, match="model.onnx.data: already exists; pass --force"):
        convert(small.v2, "onnx", output, external_data=True)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.onnx.data"]
    assert data.read_bytes() == b"someone else's"
    convert(small.v2, "onnx", output, external_data=True, force=True)
    onnx.checker.check_model(str(output), full_check=True)


def test_command_line_external_data(small, tmp_path):
    output = tmp_path / "model.onnx"
    run = subprocess.run([sys.executable, "-m", "converter", "convert", str(small.v2), "--to", "onnx", "-o",
                          str(output), "--external-data"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "model.onnx.data").is_file()
    onnx.checker.check_model(str(output), full_check=True)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the peak is read from Linux's /proc")
def test_full_size_peak_memory_is_within_twice_the_data(full, tmp_path):
    # a fresh process, as a user runs it: its own peak resident set (VmHWM; getrusage's maxrss would
    # carry over the peak of the process that started it)
    data = sum(path.stat().st_size for path in full.root.glob("model.ckpt.data-*"))
    script = ("import sys\nfrom converter.convert import convert\n"
              "convert(sys.argv[1], 'onnx', sys.argv[2])\n"
              "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
              "print(int(status['VmHWM'].split()[0]) * 1024)")
    run = subprocess.run([sys.executable, "-c", script, str(full.v2), str(tmp_path / "model.onnx")],
                         capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.split()[-1])
    assert peak <= MAX_PEAK_PER_DATA_BYTE * data, f"peak RSS {peak / 2**20:.0f} MiB for {data / 2**20:.0f} MiB of data"
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
