"""Ports describe themselves: every output records how it was made, `verify` needs no flags for it, and
`converter.api.load` rebuilds the exact module from a torch port alone."""

import json
import subprocess
import sys

import numpy as np
import pytest

from converter import oracle, provenance, table_schema
from converter.convert import convert
from converter.errors import ConvertError

# what every output records, whatever its format
RECORDED = ("ckpt_convert_version", "target", "architecture", "table", "table_blake2b", "checkpoint",
            "checkpoint_blake2b", "scope", "ema", "background", "background_option", "classes", "heads", "aux",
            "include_top", "dtype", "input_layout", "input_range", "input_size", "end_points", "strict")


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "converter", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


@pytest.mark.parametrize("name", ["model.pth", "model.safetensors", "model.onnx"])
def test_every_output_records_its_provenance(small, tmp_path, name):
    if name.endswith(".onnx"):
        pytest.importorskip("onnx", reason="writes and reads the ONNX model")
    else:
        pytest.importorskip("torch", reason="reads the .pth record with torch.load")
    path = convert(small.train, output=tmp_path / name, ema=True, aux=False, include_top=False).output
    record = provenance.read(path)
    assert set(RECORDED) <= set(record), set(RECORDED) - set(record)
    assert record["target"] == ("onnx" if name.endswith(".onnx") else "torch")
    assert (record["architecture"], record["table"], record["ema"]) == ("inception_v3", "inception_v3", "true")
    assert (record["aux"], record["include_top"], record["heads"]) == ("false", "false", "AuxLogits=left out (--no-aux)")
    assert record["checkpoint_blake2b"] == provenance.checkpoint_hash(small.train)
    assert record["table_blake2b"] == provenance.tables.load_table("inception_v3").digest
    assert record["input_size"] == "299x299" and json.loads(record["input_range"]) == [-1.0, 1.0]
    assert "AuxLogits" not in record["end_points"] and "Logits" not in record["end_points"]


def test_keras_outputs_record_it_as_root_attributes(full, tmp_path):
    pytest.importorskip("h5py", reason="reads the .h5 attributes")
    for name in ("model.h5", "model.weights.h5"):
        path = convert(full.v2, output=tmp_path / name, dtype="float16").output
        record = provenance.read(path)
        assert set(RECORDED) <= set(record), (name, set(RECORDED) - set(record))
        assert (record["target"], record["dtype"], record["input_layout"]) == ("keras", "float16", "nhwc")


def test_the_pth_record_loads_with_weights_only_and_strictly_into_torchvision(small, tmp_path):
    torch = pytest.importorskip("torch", reason="loads the .pth")
    torchvision = pytest.importorskip("torchvision", reason="the record must not stop a strict load")
    path = convert(small.v2, output=tmp_path / "model.pth").output
    state = torch.load(path, weights_only=True)
    assert state._metadata[provenance.PTH_KEY]["architecture"] == "inception_v3"
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    # the small fixture is depth-multiplied: torchvision's module does not fit it, but the record is no extra key
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(state, strict=True)
    assert "Unexpected key" not in str(error.value) and "Missing key" not in str(error.value)


def test_load_rebuilds_the_exact_module_from_the_file_alone(small, tmp_path):
    torch = pytest.importorskip("torch", reason="runs the torch module")
    from converter.api import load

    golden, images = small.golden(), small.input
    for name in ("model.pth", "model.safetensors"):
        path = convert(small.v2, output=tmp_path / name).output
        net = load(path)
        assert next(net.parameters()).device.type == "cpu"
        with torch.no_grad():
            logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
        assert logits.shape == (len(images), 1000)
        assert oracle.compare(golden["Logits"][:, 1:], logits).ok  # the background class dropped, as the port did
        with torch.no_grad():
            points = load(path, end_points=True)(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
        assert oracle.compare(golden["Mixed_6e"], points["Mixed_6e"].numpy().transpose(0, 2, 3, 1)).ok


def test_load_refuses_a_file_without_a_record_or_with_a_changed_table(small, tmp_path):
    torch = pytest.importorskip("torch", reason="writes a .pth without a record")
    from converter.api import load

    path = convert(small.v2, output=tmp_path / "model.pth").output
    bare = tmp_path / "bare.pth"
    torch.save(dict(torch.load(path, weights_only=True)), bare)
    with pytest.raises(ConvertError, match="records no provenance"):
        load(bare)
    record = provenance.read(path)
    with pytest.raises(ConvertError, match="changed since"):
        provenance.table_of(dict(record, table_blake2b="0" * 32))


def test_recorded_options_agree_or_verify_names_the_difference():
    made = {"a.pth": {"architecture": "inception_v3", "table": "inception_v3", "ema": "true", "aux": "false",
                      "include_top": "true", "input_size": "299x299", "heads": "AuxLogits=left out (--no-aux)"}}
    resolved = provenance.agree(made, {})
    assert resolved == {"arch": "inception_v3", "ema": True, "aux": False, "input_size": (299, 299), "include_top": True}
    assert provenance.agree(made, {"ema": True, "aux": False}) == resolved
    with pytest.raises(ConvertError, match=r"no --ema given, but a.pth was made with --ema"):
        provenance.agree(made, {"ema": False})
    with pytest.raises(ConvertError, match=r"--arch vgg_16, but a.pth is inception_v3"):
        provenance.agree(made, {"arch": "vgg_16"})
    other = dict(made["a.pth"], input_size="224x224")
    with pytest.raises(ConvertError, match="different input sizes"):
        provenance.agree({**made, "b.onnx": other}, {})
    assert provenance.agree({"c.pth": {}}, {"ema": True}) == {"ema": True}  # a file recording nothing asks nothing


def test_verify_needs_no_flags_for_a_port_made_with_them(small, tmp_path):
    pytest.importorskip("torch", reason="runs the torch port")
    pytest.importorskip("tensorflow", reason="verify runs the TF-Slim reference")
    port = convert(small.train, output=tmp_path / "model.pth", ema=True, aux=False, include_top=False).output
    run = _cli("verify", small.train, port)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "EQUIVALENT" in run.stdout and "AuxLogits left out (--no-aux)" in run.stdout
    assert "the same bytes as this checkpoint" in run.stdout
    assert "input: 299x299 (recorded in the ports)" in run.stdout  # not a flag the user did not give
    # TensorFlow's C++ and Python logging stays out of a run without -v
    assert run.stderr == "", run.stderr
    wrong = _cli("verify", small.train, port, "--json", "-", "--input-size", "224")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "--input-size 224x224 given" in wrong.stderr


@pytest.mark.parametrize("options", [{"background": "keep"}, {"aux": False, "include_top": False}, {"ema": True}])
def test_load_rebuilds_ports_made_with_options(small, tmp_path, options):
    torch = pytest.importorskip("torch", reason="runs the torch module")
    from converter.api import load

    path = convert(small.train, output=tmp_path / "model.pth", **options).output
    net = load(path, end_points=True)
    with torch.no_grad():
        points = net(torch.from_numpy(small.input.transpose(0, 3, 1, 2).copy()))
    golden = small.golden(ema=options.get("ema", False))
    if options.get("include_top") is False:
        assert "Logits" not in points and "AuxLogits" not in points
    else:
        assert points["Logits"].shape[-1] == (1001 if options.get("background") == "keep" else 1000)
    assert oracle.compare(golden["Mixed_7c"], points["Mixed_7c"].numpy().transpose(0, 2, 3, 1)).ok
