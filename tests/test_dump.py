"""``ckpt-convert dump`` and the writers under it: safetensors (numpy-only) and npz, written atomically."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from converter import cli
from converter._atomic import atomic_output
from converter.checkpoint import open_checkpoint
from converter.errors import ConvertError, OutputExistsError
from converter.writers.safetensors import save_safetensors

# safetensors dtype name -> numpy dtype, for reading files back independently of the writer
READ_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "U32": np.uint32, "I32": np.int32, "F32": np.float32, "U64": np.uint64,
    "I64": np.int64, "F64": np.float64,
}  # fmt: skip


def read_safetensors(path):
    """Parse a safetensors file per its spec, checking the layout rules on the way."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert length % 8 == 0
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    metadata = header.pop("__metadata__", None)
    spans = sorted(tuple(item["data_offsets"]) for item in header.values())
    assert spans[0][0] == 0 if spans else True
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and (not spans or spans[-1][1] == len(body))
    out = {}
    for name, item in header.items():
        begin, end = item["data_offsets"]
        out[name] = np.frombuffer(body[begin:end], dtype=READ_DTYPES[item["dtype"]]).reshape(item["shape"])
    return out, metadata


def dump(*args):
    try:
        cli.main(["dump", *map(str, args)])
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_dump_every_variable_bit_exact(small, tmp_path, suffix, capsys):
    out = tmp_path / f"train{suffix}"
    assert dump(small.train, "-o", out) == 0
    assert "wrote 1,169 tensors" in capsys.readouterr().err
    if suffix == ".npz":
        with np.load(out, allow_pickle=False) as archive:
            written = dict(archive)
    else:
        written, _ = read_safetensors(out)
    with open_checkpoint(small.train) as ckpt:
        assert sorted(written) == ckpt.names()
        for name in ckpt:
            assert written[name].dtype == ckpt.read(name).dtype and written[name].shape == ckpt.read(name).shape
            assert written[name].tobytes() == ckpt.read(name).tobytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_safetensors_file_loads_in_the_reference_library(small, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the reference safetensors reader")
    out = tmp_path / "model.safetensors"
    assert dump(small.v1, "-o", out) == 0
    loaded = safetensors_numpy.load_file(str(out))
    with open_checkpoint(small.v1) as ckpt:
        assert sorted(loaded) == ckpt.names()
        assert all(loaded[n].tobytes() == ckpt.read(n).tobytes() for n in ckpt)


def test_dtypes_scalars_empty_and_strings(tmp_path, capsys):
    tf = pytest.importorskip("tensorflow", reason="the checkpoint is written by TensorFlow")
    values = {
        "bf16": tf.constant([1.5, -2.25, 3e38], dtype=tf.bfloat16),
        "f16": tf.constant([[1.0, 65504.0]], dtype=tf.float16),
        "bool": tf.constant([True, False, True]),
        "u64": tf.constant([2**64 - 1], dtype=tf.uint64),
        "i8/scalar": tf.constant(-7, dtype=tf.int8),
        "empty": tf.zeros([2, 0, 3], dtype=tf.float64),
        "words": tf.constant([b"a", b"bc"]),
    }
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "m"), tensor_names=list(values), shape_and_slices=[""] * len(values),
                      tensors=list(values.values()))  # fmt: skip
    assert dump(tmp_path / "m", "-o", tmp_path / "m.safetensors") == 0
    assert "note: skipped 1 string tensor that safetensors cannot hold: words" in capsys.readouterr().err
    written, _ = read_safetensors(tmp_path / "m.safetensors")
    assert sorted(written) == sorted(set(values) - {"words"})
    for name in written:
        expected = values[name].numpy()
        assert written[name].dtype == expected.dtype and written[name].shape == expected.shape
        assert written[name].tobytes() == expected.tobytes()
    torch_loader = pytest.importorskip("safetensors.torch", reason="bfloat16 check in a reader with bfloat16")
    import torch

    bf16 = torch_loader.load_file(str(tmp_path / "m.safetensors"))["bf16"]
    assert bf16.dtype == torch.bfloat16 and bf16.view(torch.int16).numpy().tobytes() == written["bf16"].tobytes()


def test_refuses_existing_output_without_force(small, tmp_path, capsys):
    out = tmp_path / "model.npz"
    out.write_bytes(b"precious")
    assert dump(small.v2, "-o", out) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: already exists; pass --force to overwrite it\n"
    assert out.read_bytes() == b"precious"
    assert dump(small.v2, "-o", out, "--force") == 0
    with np.load(out) as archive:
        assert len(archive.files) == 388
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_unknown_output_format(small, tmp_path, capsys):
    assert dump(small.v2, "-o", tmp_path / "model.pt") == 2
    assert "unknown output format .pt; name it .safetensors or .npz" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(small, tmp_path):
    with pytest.raises(OutputExistsError):
        (tmp_path / "x.npz").write_bytes(b"")
        cli.main(["dump", str(small.v2), "-o", str(tmp_path / "x.npz"), "--debug"])


# --- the writer and the atomic helper, as other writers use them


def test_save_safetensors_layout_and_metadata(tmp_path):
    tensors = [
        ("big-endian", np.arange(5, dtype=">i4")),
        ("scalar", np.float64(2.5)),
        ("empty", np.zeros((0, 4), np.float32)),
        ("strided", np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2]),
        ("ünï/cødé", np.ones(3, ml_dtypes.bfloat16)),
    ]
    save_safetensors(tensors, tmp_path / "t.safetensors", metadata={"format": "np"})
    written, metadata = read_safetensors(tmp_path / "t.safetensors")
    assert metadata == {"format": "np"}
    for name, value in tensors:
        value = np.asarray(value)
        np.testing.assert_array_equal(written[name], value)
        assert written[name].dtype == value.dtype.newbyteorder("=") and written[name].shape == value.shape


def test_save_safetensors_names_every_unsupported_tensor(tmp_path):
    tensors = {"ok": np.zeros(2), "c": np.zeros(2, np.complex64), "s": np.array([b"x"], dtype=object)}
    with pytest.raises(ConvertError) as error:
        save_safetensors(tensors, tmp_path / "t.safetensors")
    assert "c (complex64), s (object)" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "t.safetensors").exists()


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as temp:
        temp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(OutputExistsError, match=r"out.bin: already exists; pass --force"):
        with atomic_output(target):
            pass


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
