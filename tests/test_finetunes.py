"""Fine-tunes as legacy fleets hold them: class counts, missing heads, other scopes, extra variables, input sizes.

Every checkpoint here is written by the real tf-slim network (``FINETUNES`` in conftest.py) and every
port is compared with TensorFlow's golden outputs on *all* of the checkpoint's classes, through each
target, converted with no flags. Each decision rule is also shown to fail when broken.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from converter import input_size, mapping, oracle
from converter.checkpoint import open_checkpoint
from converter.convert import convert
from converter.errors import ConvertError, MappingError

torch = pytest.importorskip("torch", reason="the torch target runs in torch")
from converter.runtimes import onnx as onnx_runtime  # noqa: E402
from converter.runtimes import torch as torch_runtime  # noqa: E402

SMALL = ("inception_v3_flowers", "inception_v3_scoped", "inception_v3_224", "inception_v3_160")
ZOO = ("inception_v1_ft", "resnet_v1_50_ft", "vgg_16_ft")
RUNTIMES = {"torch": (torch_runtime, ".pth"), "onnx": (onnx_runtime, ".onnx")}


def _shapes(path):
    with open_checkpoint(path) as ckpt:
        return {name: ckpt.info(name).shape for name in ckpt.names()}


def _expected(fixture, golden):
    # the rule: TF-Slim's background class goes only at the table's released class count
    table = mapping.load_table(fixture.meta["architecture"])
    drop = table.background_class is not None and fixture.meta["num_classes"] == table.num_classes
    return {name: np.delete(value, table.background_class, axis=-1) if drop and value.ndim == 2 else value
            for name, value in golden.items()}


def _port_and_run(fixture, target, tmp_path, checkpoint=None, golden=None, **options):
    runtime, suffix = RUNTIMES[target]
    extra = {"outputs": list(fixture.meta["end_points"])} if target == "onnx" else {}
    result = convert(checkpoint or fixture.v2, target, tmp_path / f"port{suffix}", strict=False, **options, **extra)
    outputs, _ = runtime.run(result.output, result.plan, fixture.input)
    return result, outputs


def _assert_equivalent(expected, outputs):
    assert set(expected) <= set(outputs)
    for name, want in expected.items():
        assert outputs[name].shape == want.shape, name
        result = oracle.compare(want, outputs[name])
        assert result.ok, (name, result.max_abs, result.bound)


@pytest.mark.parametrize("target", sorted(RUNTIMES))
@pytest.mark.parametrize("name", SMALL)
def test_small_finetunes_match_tf_on_every_class(finetune, name, target, tmp_path):
    fixture = finetune(name)
    result, outputs = _port_and_run(fixture, target, tmp_path)
    _assert_equivalent(_expected(fixture, fixture.golden()), outputs)
    assert result.plan.input_size.hw == (fixture.meta["image_size"],) * 2 or name == "inception_v3_160"


@pytest.mark.parametrize("target", sorted(RUNTIMES))
@pytest.mark.parametrize("name", ZOO)
def test_zoo_finetunes_match_tf_on_every_class(finetune, name, target, tmp_path):
    fixture = finetune(name)
    result, outputs = _port_and_run(fixture, target, tmp_path)
    classes = fixture.meta["num_classes"]
    assert result.plan.background.port_classes == classes and not result.plan.background.dropped
    _assert_equivalent(_expected(fixture, fixture.golden()), outputs)


def test_training_checkpoint_with_momentum_and_ema(finetune, tmp_path):
    fixture = finetune("inception_v3_flowers")
    result, outputs = _port_and_run(fixture, "torch", tmp_path, checkpoint=fixture.train, ema=True)
    _assert_equivalent(_expected(fixture, fixture.golden(ema=True)), outputs)
    assert set(result.skipped) == {"optimizer slots", "training state"}  # the shadows are what it read
    assert all(name.endswith("/Momentum") for name in result.skipped["optimizer slots"])


def test_five_classes_stay_five_and_the_released_count_loses_background(finetune):
    flowers = mapping.plan(_shapes(finetune("inception_v3_flowers").v2), mapping.load_table("inception_v3"), "torch")
    assert (flowers.background.port_classes, flowers.background.rule) == (5, "fine-tune")
    assert "--drop-background" in flowers.background.reason
    released = mapping.plan(_shapes(finetune("inception_v3_224").v2), mapping.load_table("inception_v3"), "torch")
    assert (released.background.port_classes, released.background.rule) == (1000, "released count")
    forced = mapping.plan(_shapes(finetune("inception_v3_flowers").v2), mapping.load_table("inception_v3"), "torch",
                          background="drop")
    assert forced.background.port_classes == 4
    assert [e.shape[0] for e in forced.entries if e.key == "fc.weight"] == [4]


def test_a_class_dropping_port_is_red_in_verify(finetune, tmp_path):
    verify = pytest.importorskip("converter.verify").verify
    fixture = finetune("inception_v3_flowers")
    honest = convert(fixture.v2, "torch", tmp_path / "honest.pth").output
    cut = convert(fixture.v2, "torch", tmp_path / "cut.pth", background="drop").output  # 4 of 5 classes
    report = verify(fixture.v2, [honest, cut])
    assert not report.ok
    failed = {c.backend: c for c in report.failures()}
    assert len(failed) == 1 and "cut.pth" in next(iter(failed))
    check = next(iter(failed.values()))
    assert check.name == "class axis" and "4 classes" in check.message and "5" in check.message
    assert "port classes 0..4 = TF-Slim classes 0..4" in report.table()
    # declaring the cut makes it a faithful port of a dataset whose class 0 is background
    assert verify(fixture.v2, [cut], background="drop").ok


def test_keras_and_torchvision_take_a_full_size_finetune(finetune, tmp_path):
    pytest.importorskip("keras", reason="loads into keras.applications")
    torchvision = pytest.importorskip("torchvision", reason="loads into torchvision's Inception3")
    from converter.runtimes import keras as keras_runtime

    fixture = finetune("inception_v3_flowers_full")
    expected = _expected(fixture, fixture.golden())
    for suffix in (".h5", ".weights.h5"):
        result = convert(fixture.v2, "keras", tmp_path / f"port{suffix}")
        outputs, _ = keras_runtime.run(result.output, result.plan, fixture.input)
        _assert_equivalent({k: v for k, v in expected.items() if k in outputs}, outputs)
        assert outputs["Logits"].shape == (2, 5)
    state = torch.load(convert(fixture.v2, "torch", tmp_path / "port.pth").output, weights_only=True)
    model = torchvision.models.inception_v3(weights=None, num_classes=5, aux_logits=True, init_weights=False)
    model.load_state_dict(state, strict=True)


def test_a_net_without_aux_head_under_another_scope_converts(finetune, tmp_path):
    fixture = finetune("inception_v3_scoped")
    with pytest.raises(MappingError) as error:
        convert(fixture.v2, "torch", tmp_path / "strict.pth")
    message = str(error.value)
    assert message.count("\n") == 1 and "tower_0/ExtraHead/" in message and "--lenient" in message
    assert not (tmp_path / "strict.pth").exists()
    result = convert(fixture.v2, "torch", tmp_path / "port.pth", strict=False)
    plan = result.plan
    assert (str(plan.network), plan.network.scope, plan.network.prefix) == ("tower_0/FlowerNet", "FlowerNet", "tower_0/")
    assert plan.heads == {"AuxLogits": mapping.HEAD_ABSENT}
    assert not any(key.startswith("AuxLogits") for key in torch.load(result.output, weights_only=True))
    assert plan.outside() == {"tower_0/ExtraHead": ["tower_0/ExtraHead/fc/biases", "tower_0/ExtraHead/fc/weights"]}
    assert ("not converted", "2 variables under tower_0/ExtraHead/ (no row of inception_v3.yaml takes them)") \
        in plan.decisions()


def test_a_partial_head_names_what_is_missing(finetune):
    shapes = _shapes(finetune("inception_v3_flowers").v2)
    del shapes["InceptionV3/AuxLogits/Conv2d_2b_1x1/weights"], shapes["InceptionV3/AuxLogits/Conv2d_2b_1x1/biases"]
    table = mapping.load_table("inception_v3")
    with pytest.raises(MappingError, match=r"AuxLogits is incomplete: no variables for AuxLogits/Conv2d_2b_1x1 "
                                           r"\(--no-aux leaves the head out\)"):
        mapping.plan(shapes, table, "torch")
    without = mapping.plan(shapes, table, "torch", aux=False)
    assert without.heads == {"AuxLogits": mapping.HEAD_LEFT_OUT}
    assert without.skipped["left out"] and all("/AuxLogits/" in name for name in without.skipped["left out"])


def test_two_networks_need_scope(finetune):
    shapes = _shapes(finetune("inception_v3_flowers").v2)
    both = {**{f"teacher/{k}": v for k, v in shapes.items()}, **{f"student/{k}": v for k, v in shapes.items()}}
    table = mapping.load_table("inception_v3")
    with pytest.raises(MappingError, match="holds 2 networks: student/InceptionV3 .*teacher/InceptionV3 .*--scope"):
        mapping.plan(both, table, "torch")
    plan = mapping.plan(both, table, "torch", scope="teacher/InceptionV3", strict=False)
    assert plan.root == "teacher/InceptionV3/" and {e.source.split("/")[0] for e in plan.entries if e.source} == {"teacher"}
    assert list(plan.outside()) == ["student"]


def test_detection_follows_the_structure_not_the_scope_name(finetune):
    shapes = _shapes(finetune("inception_v3_scoped").v2)
    assert mapping.detect_architecture(shapes) == "inception_v3"
    renamed = {k.replace("FlowerNet", "InceptionV3"): v for k, v in shapes.items()}
    assert mapping.locate(renamed).root == "tower_0/InceptionV3/"
    broken = {k: v for k, v in shapes.items() if "Mixed_7c/Branch_2/Conv2d_0d_3x1" not in k}
    assert mapping.detect_architecture(broken) is None


def test_dump_unmapped_exports_just_the_extra_head(finetune, tmp_path):
    fixture = finetune("inception_v3_scoped")
    out = tmp_path / "extra.npz"
    run = subprocess.run([sys.executable, "-m", "converter", "dump", str(fixture.v2), "-o", str(out),
                          "--unmapped"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with np.load(out) as data:
        assert sorted(data.files) == ["tower_0/ExtraHead/fc/biases", "tower_0/ExtraHead/fc/weights"]


def test_input_size_is_inferred_and_the_name_pattern_bound(finetune):
    table = mapping.load_table("inception_v3")
    for name, kernel in (("inception_v3_224", 3), ("inception_v3_160", 2), ("inception_v3_flowers", 5)):
        fixture = finetune(name)
        plan = mapping.plan(_shapes(fixture.v2), table, "onnx")
        layer = "AuxLogits/Conv2d_2a_{kh}x{kw}"
        assert plan.dims[layer]["kh"] == kernel
        assert plan.source_scope(layer) == f"InceptionV3/AuxLogits/Conv2d_2a_{kernel}x{kernel}"
        assert f"AuxLogits/Conv2d_2a_{kernel}x{kernel}/weights" in {e.key for e in plan.entries}
        input_size.check(table, plan.dims, (fixture.meta["image_size"],) * 2)  # its own size fits
    assert mapping.plan(_shapes(finetune("inception_v3_224").v2), table, "torch").input_size.hw == (224, 224)


def test_sizes_a_checkpoint_cannot_take_are_refused_with_the_reason(finetune, zoo):
    table = mapping.load_table("inception_v3")
    shapes = _shapes(finetune("inception_v3_224").v2)
    with pytest.raises(MappingError, match=r"--input-size 299x299: .*AuxLogits flattens a 3x3 map"):
        mapping.plan(shapes, table, "torch", input_size=(299, 299))
    assert mapping.plan(shapes, table, "torch", input_size=(299, 299), aux=False).input_size.hw == (299, 299)
    vgg = mapping.load_table("vgg_16")
    with pytest.raises(MappingError, match="fc6 is a VALID 7x7 convolution on the map, which is 8x8"):
        mapping.plan(_shapes(zoo("vgg_16").v2), vgg, "onnx", input_size=(256, 256))


def test_a_scope_name_that_disagrees_with_its_kernel_is_an_error(finetune):
    shapes = _shapes(finetune("inception_v3_224").v2)
    lying = {k.replace("Conv2d_2a_3x3", "Conv2d_2a_5x5"): v for k, v in shapes.items()}
    with pytest.raises(MappingError, match=r"Conv2d_2a_5x5/weights: shape \[3, 3, .*disagrees on `kh` "
                                           r"\(its scope name says 5\)"):
        mapping.plan(lying, mapping.load_table("inception_v3"), "torch")


def test_exact_module_and_onnx_at_the_inferred_size_via_verify(finetune):
    verify = pytest.importorskip("converter.verify").verify
    report = verify(finetune("inception_v3_224").v2)
    assert report.ok, report.table()
    assert "224x224" in report.input
    backends = {b.name: b for b in report.backends}
    skipped = [b for name, b in backends.items() if "skipped" in name]
    assert skipped and all("Conv2d_2a_3x3" in b.note and "--no-aux" in b.note for b in skipped)


def test_batch_decides_each_finetune_by_itself(finetune, tmp_path):
    from converter.batch import run_batch

    tree = tmp_path / "fleet"
    for name in ("inception_v3_flowers", "inception_v3_scoped", "inception_v3_224"):
        fixture = finetune(name)
        (tree / name).mkdir(parents=True)
        for part in fixture.root.glob("model.ckpt.*"):
            (tree / name / part.name).write_bytes(part.read_bytes())
    report = run_batch([tree], tmp_path / "out", targets="torch,onnx", strict=False, jobs=2)
    assert report.ok, report.models
    records = {r.id: r.to_dict() for r in report.models}
    flowers = records["inception_v3_flowers/model.ckpt"]["decisions"]
    assert (flowers["background"]["port_classes"], flowers["background"]["rule"]) == (5, "fine-tune")
    scoped = records["inception_v3_scoped/model.ckpt"]
    assert scoped["decisions"]["scope"] == "tower_0/FlowerNet"
    assert scoped["decisions"]["heads"] == {"AuxLogits": mapping.HEAD_ABSENT}
    assert scoped["skipped"]["outside the network"] == 2
    zoo_like = records["inception_v3_224/model.ckpt"]["decisions"]
    assert zoo_like["input_size"] == [224, 224] and zoo_like["background"]["rule"] == "released count"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "`tower_0/FlowerNet`" in markdown and "5 (fine-tune)" in markdown and "1000 (released count)" in markdown
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ok"]


def test_a_wrong_background_rule_is_caught_by_the_golden_outputs(finetune, tmp_path):
    # the mutation: a port that drops class 0 of a fine-tune no longer matches TF on every class
    fixture = finetune("inception_v3_flowers")
    _, outputs = _port_and_run(fixture, "torch", tmp_path, background="drop")
    with pytest.raises(AssertionError):
        _assert_equivalent(_expected(fixture, fixture.golden()), outputs)


def test_drop_background_is_refused_where_the_architecture_has_none():
    with pytest.raises(ConvertError, match="vgg_16 has no background class"):
        mapping.decide_background(mapping.load_table("vgg_16"), 6, "drop")


def test_usage_error_for_contradicting_background_flags(finetune):
    run = subprocess.run([sys.executable, "-m", "converter", "--to", "torch", str(finetune("inception_v3_flowers").v2),
                          "--keep-background", "--drop-background", "--dry-run"], capture_output=True, text=True)
    assert run.returncode == 2 and "contradict" in run.stderr and "Traceback" not in run.stderr


def test_ports_record_their_input_size_and_verify_uses_it(finetune, tmp_path):
    verify = pytest.importorskip("converter.verify").verify
    onnx = pytest.importorskip("onnx", reason="reads the model's properties")
    fixture = finetune("inception_v3_160")
    path = convert(fixture.v2, "onnx", tmp_path / "port.onnx", input_size=(160, 160)).output
    properties = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert properties["input_size"] == "160x160" and properties["classes"] == "12"
    assert properties["background"] == "fine-tune" and properties["input_size_dynamic"] == "true"
    report = verify(fixture.v2, [path])
    assert report.ok, report.table()
    assert "2x160x160x3" in report.input
    inferred = convert(fixture.v2, "onnx", tmp_path / "inferred.onnx").output
    with pytest.raises(ConvertError, match="different input sizes"):
        verify(fixture.v2, [path, inferred])


def test_vgg_finetune_through_keras(finetune, tmp_path):
    pytest.importorskip("keras", reason="loads into keras.applications")
    from converter.runtimes import keras as keras_runtime

    fixture = finetune("vgg_16_ft")
    result = convert(fixture.v2, "keras", tmp_path / "port.weights.h5")
    outputs, _ = keras_runtime.run(result.output, result.plan, fixture.input)
    assert outputs["Logits"].shape == (2, 6)
    _assert_equivalent({k: v for k, v in _expected(fixture, fixture.golden()).items() if k in outputs}, outputs)


@pytest.mark.parametrize("name", ("inception_v1_ft", "inception_v2_ft", "resnet_v1_50_ft"))
def test_zoo_finetunes_verify_with_no_flags(finetune, name):
    verify = pytest.importorskip("converter.verify").verify
    report = verify(finetune(name).v2)
    assert report.ok, report.table()
    classes = FINETUNE_CLASSES[name]
    assert f"port classes 0..{classes - 1} = TF-Slim classes 0..{classes - 1}" in report.table()


FINETUNE_CLASSES = {"inception_v1_ft": 10, "inception_v2_ft": 5, "resnet_v1_50_ft": 3}


def test_verify_a_scoped_net_without_aux_head_with_no_flags(finetune):
    verify = pytest.importorskip("converter.verify").verify
    report = verify(finetune("inception_v3_scoped").v2)
    assert report.ok, report.table()
    onnx_checks = [c for c in report.checks if c.backend.startswith("onnxruntime") and c.kind == "output"]
    assert {c.name for c in onnx_checks} == {"Mixed_5b", "Mixed_6e", "Mixed_7c", "Logits"}
    assert "network: FlowerNet (inception_v3) under tower_0/" in report.decisions


def test_one_onnx_model_serves_other_input_sizes(finetune, tmp_path):
    # nothing in a ResNet's weights reveals its training size: the model must take the size it is given
    reference = pytest.importorskip("converter.reference")
    onnx = pytest.importorskip("onnx", reason="reads the model's input")
    fixture = finetune("resnet_v1_50_ft")
    result = convert(fixture.v2, "onnx", tmp_path / "port.onnx", outputs=["block1", "Logits"])
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(result.output)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    images = np.random.default_rng(1).uniform(-123.68, 151.06, (2, 161, 190, 3)).astype(np.float32)  # odd and even
    golden = reference.run_reference(fixture.v2, images, architecture="resnet_v1_50", end_points=["block1", "Logits"])
    outputs, _ = onnx_runtime.run(result.output, result.plan, images)
    _assert_equivalent(golden, outputs)
