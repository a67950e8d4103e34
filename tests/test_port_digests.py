"""Ports do not change unnoticed: every output format of a few real networks, digested and compared.

Each port's digest covers all it holds (every tensor's key, dtype, shape and bytes in file order, the
file's structure and attributes, the ONNX graph) with the record fields that name this machine (the
checkpoint's and table's paths, the version) replaced by placeholders, so the committed digests hold
on any machine. ``CKPT_CONVERT_PORT_SHA256=FILE`` also writes each file's sha256 to ``FILE``: two runs
on one machine compare byte for byte. ``CKPT_CONVERT_WRITE_PORT_DIGESTS=1`` records the digests found
(after a change meant to change the ports).
"""

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest

import converter
from converter import provenance
from converter.convert import convert

pytest.importorskip("torch", reason="the torch ports are digested as torch reads them")
pytest.importorskip("h5py", reason="the Keras ports are HDF5 files")
pytest.importorskip("onnx", reason="the ONNX ports are digested as ONNX models")

DIGESTS = pathlib.Path(__file__).with_name("port_digests.json")
# record fields that name the machine or the release rather than the port
MACHINE_FIELDS = ("checkpoint", "table", "ckpt_convert_version")
ALL_SUFFIXES = (".pth", ".safetensors", ".h5", ".weights.h5", ".onnx")
TORCH_ONNX = (".pth", ".safetensors", ".onnx")

# port name -> (checkpoint, convert options, suffixes); checkpoints named by the conftest fixture that makes them
CASES = {
    "inception_v3_small": ("small", {}, TORCH_ONNX),
    "inception_v3_small_no_aux": ("small", {"aux": False}, TORCH_ONNX),
    "inception_v3_small_no_top": ("small", {"include_top": False}, TORCH_ONNX),
    "resnet_v2_50": ("resnet_v2_50", {}, ALL_SUFFIXES),
    # its Logits is a `scoped: false` group (the layer `logits`)
    "resnet_v2_50_no_top": ("resnet_v2_50", {"include_top": False}, ALL_SUFFIXES),
    "mobilenet_v2": ("mobilenet_v2", {}, ALL_SUFFIXES),
    "inception_v1": ("inception_v1", {}, TORCH_ONNX),
    "meta_residual": ("meta_residual", {}, TORCH_ONNX),
}


@pytest.fixture(scope="module")
def checkpoints(small, zoo, meta_net):
    def make(name):
        if name == "small":
            return small.v2, {}
        if name.startswith("meta_"):
            fixture = meta_net(name[len("meta_"):])
            return fixture.checkpoint, {"mapping": fixture.graph}
        return zoo(name).v2, {}

    return make


def _placeholders(path):
    record = provenance.read(path)
    return {record[field]: f"<{field}>" for field in MACHINE_FIELDS if record.get(field)}


def _plain(text, placeholders):
    for value, placeholder in placeholders.items():
        text = text.replace(value, placeholder)
    return text


def _digest_array(digest, key, array):
    array = np.asarray(array)
    digest.update(f"{key}|{array.dtype.str}|{list(array.shape)}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())


def _digest_record(digest, path, placeholders):
    record = provenance.read(path)
    digest.update(json.dumps({key: _plain(value, placeholders) for key, value in record.items()},
                             sort_keys=True).encode())


def _digest_torch(path, placeholders):
    from converter.runtimes import torch as torch_runtime

    digest = hashlib.sha256()
    for key, array in torch_runtime.load_weights(path).items():
        _digest_array(digest, key, array)
    _digest_record(digest, path, placeholders)
    return digest.hexdigest()


def _digest_h5(path, placeholders):
    import h5py

    digest = hashlib.sha256()

    def attributes(name, item):
        for key, value in item.attrs.items():
            value = np.asarray(value)
            shown = _plain(str(value.tolist()), placeholders) if value.dtype.kind in "OSU" else value.tobytes().hex()
            digest.update(f"{name}@{key}={shown}|".encode())

    def visit(name, item):
        attributes(name, item)
        if isinstance(item, h5py.Dataset):
            _digest_array(digest, name, item[()])
        else:
            digest.update(f"{name}/|".encode())

    with h5py.File(path, "r") as handle:
        attributes("", handle)
        handle.visititems(visit)
    return digest.hexdigest()


def _digest_onnx(path, placeholders):
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        prop.value = _plain(prop.value, placeholders)
    model.producer_version = "<version>"
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def digest(path):
    """The machine-independent digest of a port (``.pth``, ``.safetensors``, ``.h5``, ``.weights.h5``, ``.onnx``)."""
    path = pathlib.Path(path)
    placeholders = _placeholders(path)
    if path.name.endswith(".h5"):
        return _digest_h5(path, placeholders)
    if path.suffix == ".onnx":
        return _digest_onnx(path, placeholders)
    return _digest_torch(path, placeholders)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ports_are_unchanged(case, checkpoints, tmp_path):
    name, options, suffixes = CASES[case]
    checkpoint, extra = checkpoints(name)
    found, sha256 = {}, {}
    for suffix in suffixes:
        result = convert(checkpoint, output=tmp_path / f"{case}{suffix}", **extra, **options)
        found[suffix] = digest(result.output)
        sha256[suffix] = hashlib.sha256(result.output.read_bytes()).hexdigest()
    record = os.environ.get("CKPT_CONVERT_PORT_SHA256")
    if record:
        path = pathlib.Path(record)
        known = json.loads(path.read_text()) if path.exists() else {}
        known[case] = sha256
        path.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    expected = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    if os.environ.get("CKPT_CONVERT_WRITE_PORT_DIGESTS"):
        expected[case] = found
        DIGESTS.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    assert found == expected[case], f"{case}: the ports changed (ckpt-convert {converter.__version__})"


def test_a_changed_tensor_changes_the_digest(small, tmp_path):
    import torch

    path = convert(small.v2, output=tmp_path / "model.pth").output
    before = digest(path)
    state = torch.load(str(path), weights_only=True)
    key = next(iter(state))
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1
    metadata = state._metadata
    torch.save(state, str(tmp_path / "changed.pth"))
    assert metadata and digest(tmp_path / "changed.pth") != before
