"""``ckpt-convert --from slim --to torch``: bit-exact weights, strict loads into torchvision and timm,
equivalence with TF-Slim, wrong mappings caught, and the command line's contract."""

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import scratch
from converter import mapping, oracle, table_schema
from converter.checkpoint import open_checkpoint
from converter.cli import main
from converter.convert import convert, default_output
from converter.errors import ConvertError, MappingError, OutputExistsError

# torch loads before TensorFlow in one process (converter.reference); these tests import TF later
torch = pytest.importorskip("torch", reason="loading the outputs needs torch")
nets = pytest.importorskip("converter.nets.torch", reason="the torch network needs torch")

from test_nets_torch import compare_with_golden, run  # noqa: E402  (needs torch, skipped above without it)

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOT_INCEPTION = ROOT / "fixtures" / "real" / "half_plus_two_snappy" / "variables"
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _tf():
    from converter.reference import import_tensorflow

    return import_tensorflow()[0]


def _copy_v2(prefix, directory):
    for file in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(file, directory / file.name)
    return directory / prefix.name


def _load_pth(path):
    return torch.load(path, weights_only=True)


def _load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


LOADERS = {".pth": _load_pth, ".safetensors": _load_safetensors}


def _expected(checkpoint, *, ema=False, aux=True):
    """What every key must hold, computed from TensorFlow's own reader of the checkpoint."""
    reader = _tf().train.load_checkpoint(str(checkpoint))
    shapes = reader.get_variable_to_shape_map()
    plan = mapping.plan(shapes, mapping.load_table("inception_v3"), "torch", ema=ema, aux=aux)
    return plan.entries, {entry.key: entry.value(reader.get_tensor) for entry in plan.entries}


# ---- weights survive bit-exactly


@pytest.mark.parametrize("suffix", sorted(LOADERS))
@pytest.mark.parametrize("kind", ["v2", "v1", "train"])
def test_weights_round_trip_bit_exactly(small, tmp_path, suffix, kind):
    result = convert(getattr(small, kind), "torch", tmp_path / f"out{suffix}")
    state = LOADERS[suffix](result.output)
    entries, expected = _expected(getattr(small, kind))
    assert list(state) == [entry.key for entry in entries]
    for key, want in expected.items():
        got = state[key]
        assert got.dtype == (torch.int64 if want.dtype == np.int64 else torch.float32), key
        assert tuple(got.shape) == want.shape, key
        assert np.array_equal(got.numpy(), want), key
    reader = _tf().train.load_checkpoint(str(small.v2))
    # the documented transforms, spelled out independently of the table
    stem = reader.get_tensor("InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1/weights")
    assert np.array_equal(state["Mixed_6c.branch7x7dbl_4.conv.weight"].numpy(), stem.transpose(3, 2, 0, 1))
    logits = reader.get_tensor("InceptionV3/Logits/Conv2d_1c_1x1/weights")
    assert np.array_equal(state["fc.weight"].numpy(), logits[0, 0, :, 1:].T)
    assert torch.equal(state["Conv2d_1a_3x3.bn.weight"], torch.ones_like(state["Conv2d_1a_3x3.bn.bias"]))
    assert state["Conv2d_1a_3x3.bn.num_batches_tracked"].shape == ()
    assert state["Conv2d_1a_3x3.bn.num_batches_tracked"].item() == 0


@pytest.mark.parametrize("suffix", sorted(LOADERS))
@pytest.mark.parametrize("dtype", sorted(TORCH_DTYPES))
def test_cast_equals_torchs_cast(small, tmp_path, suffix, dtype):
    state = LOADERS[suffix](convert(small.v2, "torch", tmp_path / f"out{suffix}", dtype=dtype).output)
    _, expected = _expected(small.v2)
    for key, want in expected.items():
        if want.dtype == np.int64:
            assert state[key].dtype == torch.int64 and state[key].item() == want.item()
            continue
        assert state[key].dtype == TORCH_DTYPES[dtype], key
        assert torch.equal(state[key], torch.from_numpy(want.copy()).to(TORCH_DTYPES[dtype])), key


def test_pth_storages_are_aligned_and_mappable(small, tmp_path):
    import zipfile

    path = convert(small.v2, "torch", tmp_path / "out.pth").output
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
                assert start % 64 == 0, info.filename
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert all(torch.equal(mapped[k], v) for k, v in _load_pth(path).items())


def test_convert_to_torch_needs_neither_torch_nor_tensorflow(small, tmp_path):
    code = (
        "import sys\n"
        "from converter.convert import convert\n"
        f"convert({str(small.v2)!r}, 'torch', {str(tmp_path / 'a.pth')!r})\n"
        f"convert({str(small.v2)!r}, 'torch', {str(tmp_path / 'a.safetensors')!r}, dtype='bfloat16')\n"
        "loaded = sorted(m for m in ('torch', 'tensorflow', 'safetensors') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert len(_load_pth(tmp_path / "a.pth")) == 580


# ---- the converted weights compute what TF-Slim computes


@pytest.mark.parametrize("kind, ema", [("v2", False), ("v1", False), ("train", True)])
def test_converted_file_matches_tf_golden(small, tmp_path, kind, ema):
    result = convert(getattr(small, kind), "torch", tmp_path / "out.pth", ema=ema)
    net = nets.build(result.plan, _load_pth(result.output))
    results = compare_with_golden(run(net, small.input), small.golden(ema=ema))
    assert all(c.ok for c in results.values()), {k: c.max_abs for k, c in results.items()}


def _modified_table(tmp_path, edit):
    data = table_schema.read(mapping.load_table("inception_v3").path)
    edit(data)
    path = tmp_path / "modified.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _same_shape_pair(plan, state):
    """Two conv layers whose torch tensors have identical shapes but different values."""
    by_layer = {}
    for entry in plan.entries:
        by_layer.setdefault(entry.key.rpartition(".conv.")[0], []).append(entry)
    layers = [layer for layer, entries in by_layer.items() if any(".conv." in e.key for e in entries)]
    table = plan.table
    slim = {row.name("torch"): name for name, row in table.layers.items() if isinstance(row.name("torch"), str)}
    for i, a in enumerate(layers):
        for b in layers[i + 1:]:
            wa, wb = state[f"{a}.conv.weight"], state[f"{b}.conv.weight"]
            if wa.shape == wb.shape and not torch.equal(wa, wb):
                return slim[a], slim[b]
    raise AssertionError("no two same-shape layers in the fixture")


def test_two_swapped_same_shape_rows_are_caught(small, tmp_path):
    good = convert(small.v2, "torch", tmp_path / "good.pth")
    state = _load_pth(good.output)
    first, second = _same_shape_pair(good.plan, state)

    def swap(data):
        rows = data["layers"]
        rows[first]["torch"], rows[second]["torch"] = rows[second]["torch"], rows[first]["torch"]

    bad = convert(small.v2, "torch", tmp_path / "bad.pth", mapping=_modified_table(tmp_path, swap))
    bad_state = _load_pth(bad.output)
    assert {k: v.shape for k, v in bad_state.items()} == {k: v.shape for k, v in state.items()}  # loads fine...
    net = nets.build(good.plan, bad_state)
    results = compare_with_golden(run(net, small.input), small.golden())
    assert not all(c.ok for c in results.values())  # ...and the oracle catches it


def test_a_skipped_transpose_is_caught(small, tmp_path):
    def skip(data):
        data["kinds"]["conv_bn_nogamma_relu"]["torch"]["conv.weight"]["transform"] = "identity"

    good = convert(small.v2, "torch", tmp_path / "good.pth")
    bad = convert(small.v2, "torch", tmp_path / "bad.pth", mapping=_modified_table(tmp_path, skip))
    with pytest.raises(RuntimeError, match="size mismatch"):
        nets.build(good.plan, _load_pth(bad.output))


def test_a_kept_background_class_is_caught(small, tmp_path):
    good = convert(small.v2, "torch", tmp_path / "good.pth")
    kept = _load_pth(convert(small.v2, "torch", tmp_path / "kept.pth", background="keep").output)
    assert kept["fc.weight"].shape[0] == 1001
    with pytest.raises(RuntimeError, match="size mismatch"):
        nets.build(good.plan, kept)
    # dropping the wrong class (the last instead of TF-Slim's class 0) loads, and the oracle catches it
    for key in ("fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"):
        kept[key] = kept[key][:-1]
    results = compare_with_golden(run(nets.build(good.plan, kept), small.input), small.golden())
    assert not results["Logits"].ok and not results["AuxLogits"].ok
    assert results["Mixed_7c"].ok


# ---- full size: strict loads into torchvision and timm


@pytest.fixture(scope="module")
def full_pth(full, tmp_path_factory):
    with scratch(tmp_path_factory, "full") as out:
        yield {aux: convert(full.v2, "torch", out / f"aux{aux}.pth", aux=aux).output for aux in (True, False)}


def _torchvision(aux):
    torchvision = pytest.importorskip("torchvision", reason="loads into torchvision's Inception3")
    return torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False)


def _timm(aux):
    timm = pytest.importorskip("timm", reason="loads into timm's inception_v3")
    return timm.create_model("inception_v3", pretrained=False, aux_logits=aux)


@pytest.mark.parametrize("model", [_torchvision, _timm], ids=["torchvision", "timm"])
@pytest.mark.parametrize("aux", [True, False], ids=["aux", "no-aux"])
def test_full_size_loads_strictly(full_pth, model, aux):
    state = _load_pth(full_pth[aux])
    assert len(state) == (580 if aux else 566)
    net = model(aux)
    net.load_state_dict(state, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_full_size_headless_loads_into_timm_without_classifier(full, tmp_path):
    timm = pytest.importorskip("timm", reason="loads into timm's inception_v3")
    result = convert(full.v2, "torch", tmp_path / "headless.pth", include_top=False, aux=False)
    assert result.tensors == 564
    timm.create_model("inception_v3", pretrained=False, num_classes=0).load_state_dict(
        _load_pth(result.output), strict=True)


def test_full_size_safetensors_loads_strictly(full, tmp_path):
    state = _load_safetensors(convert(full.v2, "torch", tmp_path / "full.safetensors").output)
    _torchvision(True).load_state_dict(state, strict=True)


@pytest.mark.parametrize("model", [_torchvision, _timm], ids=["torchvision", "timm"])
def test_full_size_kept_background_fails_to_load(full, tmp_path, model):
    state = _load_pth(convert(full.v2, "torch", tmp_path / "kept.pth", background="keep").output)
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        model(True).load_state_dict(state, strict=True)


def test_torchvision_drifts_from_tf_at_the_borders(full, full_pth):
    """torchvision's Inception3 averages padding in (count_include_pad=True); our network does not."""
    net = _torchvision(True).eval()
    net.load_state_dict(_load_pth(full_pth[True]), strict=True)
    images = torch.from_numpy(np.ascontiguousarray(full.input.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        logits = net(images).numpy()
    reference = np.delete(full.golden()["Logits"], 0, axis=1)
    drift = oracle.compare(reference, logits)
    exact = nets.build(convert(full.v2, "torch", dry_run=True).plan, _load_pth(full_pth[True]), device="cpu")
    ours = oracle.compare(reference, run(exact, full.input)["Logits"])
    assert ours.ok
    assert not drift.ok and drift.max_abs > 100 * ours.max_abs


# ---- the API's contract


def test_default_output_sits_beside_the_checkpoint(small, tmp_path):
    assert default_output(pathlib.Path("a/model.ckpt"), "torch") == pathlib.Path("a/model.pth")
    assert default_output(pathlib.Path("a/model.ckpt-1234"), "torch") == pathlib.Path("a/model.ckpt-1234.pth")
    assert default_output(pathlib.Path("x.ckpt"), "onnx") == pathlib.Path("x.onnx")
    v2 = _copy_v2(small.v2, tmp_path)
    assert convert(v2).output == tmp_path / "model.pth"
    shutil.copy(small.v1, tmp_path / "x.ckpt")
    assert convert(tmp_path / "x.ckpt").output == tmp_path / "x.pth"
    train = tmp_path / "train"
    shutil.copytree(small.train.parent, train)
    result = convert(train, ema=True)  # a directory: its checkpoint state file names the latest
    assert result.output == train / "model.ckpt-1234.pth"
    with open_checkpoint(small.train) as ckpt:
        names = ckpt.names()
    slots = [n for n in names if n.endswith(("/RMSProp", "/RMSProp_1"))]
    shadows = [n for n in names if n.endswith("/ExponentialMovingAverage")]
    assert result.skipped == {"optimizer slots": slots, "training state": ["global_step"]}
    assert convert(train / "model.ckpt-1234", force=True).skipped["ema shadows"] == shadows


def test_never_overwrites_without_force(small, tmp_path):
    target = tmp_path / "out.pth"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--force"):
        convert(small.v2, "torch", target)
    assert target.read_bytes() == b"precious"
    convert(small.v2, "torch", target, force=True)
    assert len(_load_pth(target)) == 580


def test_a_failing_writer_leaves_nothing(small, tmp_path, monkeypatch):
    from converter.writers import torch as torch_writer

    def explode(plan, read, path, **options):
        pathlib.Path(path).write_bytes(b"half")
        raise ConvertError("disk full")

    monkeypatch.setattr(torch_writer, "save_pth", explode)
    with pytest.raises(ConvertError, match="disk full"):
        convert(small.v2, "torch", tmp_path / "out.pth")
    assert list(tmp_path.iterdir()) == []


def test_dry_run_writes_nothing(small, tmp_path):
    result = convert(small.v2, "torch", tmp_path / "out.pth", dry_run=True)
    assert result.dry_run and result.tensors == 580 and result.bytes == 0
    assert list(tmp_path.iterdir()) == []


def test_problems_are_found_before_writing(small, tmp_path):
    with pytest.raises(ConvertError, match=r"\.pth or|writes \.pth"):
        convert(small.v2, "torch", tmp_path / "out.bin")
    with pytest.raises(MappingError, match="ExponentialMovingAverage"):
        convert(small.v2, "torch", tmp_path / "out.pth", ema=True)
    with pytest.raises(ConvertError, match="dtype"):
        convert(small.v2, "torch", tmp_path / "out.pth", dtype="int8")
    with pytest.raises(ConvertError, match="--opset does not apply to the torch target"):
        convert(small.v2, "torch", tmp_path / "out.pth", opset=17)
    assert list(tmp_path.iterdir()) == []


def test_a_non_inception_checkpoint_is_rejected_listing_its_variables(tmp_path):
    with pytest.raises(MappingError) as error:
        convert(NOT_INCEPTION, "torch", tmp_path / "out.pth")
    assert "unmapped" in str(error.value)
    with open_checkpoint(NOT_INCEPTION) as ckpt:
        assert all(name in str(error.value) for name in ckpt.names())
    with pytest.raises(MappingError, match="variables: no network of inception_v3"):
        convert(NOT_INCEPTION, "torch", tmp_path / "out.pth", arch="inception_v3")


@pytest.fixture(scope="module")
def with_extra_variable(small, tmp_path_factory):
    """The small fixture plus one variable no mapping row takes, written by TensorFlow."""
    tf = _tf()
    reader = tf.train.load_checkpoint(str(small.v2))
    names = sorted(reader.get_variable_to_shape_map()) + ["InceptionV3/NewHead/weights"]
    values = [reader.get_tensor(n) for n in names[:-1]] + [np.ones((3, 5), np.float32)]
    prefix = tmp_path_factory.mktemp("extra") / "model.ckpt"
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=values)
    return prefix


def test_unmapped_variables_fail_strict_and_are_listed_lenient(with_extra_variable, tmp_path):
    with pytest.raises(MappingError, match="unmapped variable InceptionV3/NewHead/weights.*--lenient"):
        convert(with_extra_variable, "torch", tmp_path / "out.pth")
    result = convert(with_extra_variable, "torch", tmp_path / "out.pth", strict=False)
    assert result.skipped["unmapped"] == ["InceptionV3/NewHead/weights"]


def test_a_tf2_checkpoint_is_rejected(tmp_path):
    tf = _tf()
    prefix = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).write(str(tmp_path / "tf2" / "ckpt"))
    with pytest.raises(ConvertError, match="TF2 object-based"):
        convert(prefix, "torch", tmp_path / "out.pth")


# ---- the command line


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        main(list(map(str, args)))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_cli_writes_beside_the_input_and_refuses_to_overwrite(small, tmp_path, capsys):
    v2 = _copy_v2(small.v2, tmp_path)
    code, out, _ = _cli(capsys, "--from", "slim", "--to", "torch", v2)
    assert code == 0
    assert f"wrote {tmp_path / 'model.pth'}: 580 tensors" in out
    written = (tmp_path / "model.pth").read_bytes()
    code, out, err = _cli(capsys, "--from", "slim", "--to", "torch", v2)
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and "already exists" in err and "--force" in err
    assert "Traceback" not in err
    assert (tmp_path / "model.pth").read_bytes() == written
    code, out, _ = _cli(capsys, "--from", "slim", "--to", "torch", v2, "--force", "--dtype", "float16")
    assert code == 0 and "float16" in out
    assert _load_pth(tmp_path / "model.pth")["fc.weight"].dtype == torch.float16


def test_cli_dry_run_prints_the_plan_and_writes_nothing(small, tmp_path, capsys):
    code, out, _ = _cli(capsys, "--from", "slim", "--to", "torch", small.v2, "-o", tmp_path / "x.pth", "--dry-run")
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert "InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights" in out
    assert "-> Mixed_6a.branch3x3.conv.weight" in out and "hwio_to_oihw" in out
    assert "drop class 0" in out


def test_cli_options_reach_the_plan(small, tmp_path, capsys):
    code, out, _ = _cli(capsys, small.train, "--ema", "--no-aux", "--keep-background", "-o", tmp_path / "x.pth")
    assert code == 0 and "566 tensors" in out and "392 optimizer slots" in out
    assert _load_pth(tmp_path / "x.pth")["fc.weight"].shape[0] == 1001


@pytest.mark.parametrize("args, message", [
    (["--to", "torch", NOT_INCEPTION], "unmapped: a, a2, b, c, c2"),
    (["--to", "torch", "no/such.ckpt"], "no such checkpoint"),
    (["--to", "torch", "--mapping", "no/such.yaml", "fixtures/inception_v3/model.ckpt"], "cannot read mapping"),
])
def test_cli_errors_are_one_line_and_non_zero(capsys, args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = _cli(capsys, *args)
    assert code != 0
    assert message in err and err.startswith("error: ") and err.count("\n") <= 1 + err.count("\n  ")
    assert "Traceback" not in err


def test_cli_subprocess_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "converter", "--from", "slim", "--to", "torch", str(NOT_INCEPTION),
                             "-o", str(tmp_path / "x.pth")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pth").exists()
