"""verify on hostile inputs: a batch that is not numbers, an image bomb, damaged or pickled ports:
a one-line input error, or a failed check in the report, which is still written."""

import json
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest

import crafted
from converter import mapping
from converter.errors import ConvertError


# --- verify's inputs and ported files


def _npy(path, header, data=b""):
    header = header.encode() + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data)
    return path


def _png(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


def test_verify_inputs_that_are_not_a_batch_are_one_line_errors(tmp_path):
    pytest.importorskip("PIL", reason="images are read with Pillow")
    from converter.verify import make_input

    table = mapping.load_table("inception_v3")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "structured.npy", np.zeros((1, 299, 299, 3), dtype=[("a", "f4")]))
    np.savez(tmp_path / "archive.npz", batch=np.zeros((1, 299, 299, 3), np.float32))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    np.save(tmp_path / "truncated.npy", np.zeros((4, 299, 299, 3), np.float32))
    with open(tmp_path / "truncated.npy", "r+b") as file:
        file.truncate(10_000)
    inputs = {
        "objects.npy": "not a readable .npy array",
        "structured.npy": "not numbers",
        "archive.npy": "an .npz archive, not one .npy array",
        "truncated.npy": "not a readable .npy array",
        "header.npy": "not a readable .npy array",
        "bomb.png": "resize it first",
        "large.png": "9000x9000 pixels, more than the 64,000,000 an input image may have; resize it first",
        "broken.png": "not a readable image",
    }
    _npy(tmp_path / "header.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), " + " " * 60_000 + "}")
    _png(tmp_path / "bomb.png", 20000, 20000)
    _png(tmp_path / "large.png", 9000, 9000)
    (tmp_path / "broken.png").write_bytes(_png(tmp_path / "x.png", 8, 8).read_bytes()[:40])
    for name, message in inputs.items():
        with pytest.raises(ConvertError) as error:
            make_input(table, input_file=tmp_path / name)
        assert message in str(error.value) and "\n" not in str(error.value), (name, str(error.value))


class _Payload:
    """A pickle that asks to call a function as it loads (a harmless one): weights-only loading refuses it."""

    def __reduce__(self):
        return os.getcwd, ()


def test_verify_reports_damaged_and_hostile_ports_as_failed_checks(small, tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch", reason="the torch ports are checked with torch")
    onnx = pytest.importorskip("onnx", reason="the ONNX ports are built with onnx")
    pytest.importorskip("onnxruntime", reason="the ONNX ports run in onnxruntime")
    from converter import cli, reference
    from converter.convert import convert

    # TensorFlow's own outputs on the golden input stand in for running it again
    monkeypatch.setattr(reference, "run_reference", lambda *args, **kwargs: small.golden())
    monkeypatch.setattr(reference, "tf_device", lambda device: "/CPU:0")
    convert(small.v2, to="torch", output=tmp_path / "honest.pth")
    convert(small.v2, to="onnx", output=tmp_path / "model.onnx")
    model = onnx.load(tmp_path / "model.onnx")
    model.graph.initializer[0].name = "renamed"
    onnx.save(model, tmp_path / "renamed.onnx")
    model = onnx.load(tmp_path / "model.onnx")
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, tmp_path / "unknown_op.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    torch.save({"fc.bias": _Payload()}, tmp_path / "pickle.pth")
    files = ["honest.pth", "renamed.onnx", "unknown_op.onnx", "empty.onnx", "pickle.pth"]
    with pytest.raises(SystemExit) as stop:
        cli.main(["verify", str(small.v2), *(str(tmp_path / name) for name in files), "--input",
                  str(small.root / "golden_input.npy"), "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml")])
    assert stop.value.code == 1 and "Traceback" not in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    verdicts = {}
    for backend in report["backends"]:
        checks = [c for c in report["checks"] if c["backend"] == backend["name"]]
        verdicts[pathlib.Path(backend["path"]).name] = all(c["passed"] for c in checks)
        assert all("\n" not in c["message"] for c in checks)
    assert verdicts == {"honest.pth": True, **{name: False for name in files[1:]}}
    messages = " ".join(c["message"] for c in report["checks"])
    assert "refused: its pickle calls posix.getcwd" in messages and "weights_only" not in messages
    assert messages.count("cannot run") >= 2 and (tmp_path / "r.xml").stat().st_size


def test_verify_input_that_is_not_a_batch_is_a_one_line_error_from_the_command_line(small, tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result, _ = crafted.run_one(["verify", str(small.v2), "--input", str(tmp_path / "objects.npy"), "--json", str(tmp_path / "r.json")])
    crafted.assert_error(result, "not a readable .npy array")
    assert not (tmp_path / "r.json").exists()
