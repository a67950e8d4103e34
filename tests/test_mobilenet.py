"""MobileNet V1 and V2: the committed zoo-sized checkpoints through every target, the reference network
against keras.applications', width inference, torchvision's mobilenet_v2, and detection backbones.

The committed fixtures (``fixtures/mobilenet_v1``: width 0.25 at 128; ``fixtures/mobilenet_v2``: 0.35 at 96,
Conv_1 kept at 1280 as the zoo's) were written by TensorFlow from ``converter.slim_nets``; their golden
outputs are TF-Slim's. Full-width checkpoints run through tests/test_zoo.py's paths (conftest.GENERATED).
"""

import copy

import numpy as np
import pytest
import yaml

from conftest import FIXTURES, Fixture
from converter import mapping, oracle, table_schema
from converter.checkpoint import open_checkpoint
from converter.errors import ConvertError, MappingError
from converter.slim_nets import mobilenet_v1, mobilenet_v2

torch = pytest.importorskip("torch", reason="the torch targets run in torch")
nets = pytest.importorskip("converter.nets.torch", reason="the exact module needs torch")

ARCHS = ("mobilenet_v1", "mobilenet_v2")
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
# the widths the zoo released; V2's below 1.0 keep Conv_1 at 1280 (finegrain_classification_mode)
V1_WIDTHS = (0.25, 0.5, 0.75, 1.0)
V2_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def _fixture(arch):
    return Fixture(FIXTURES / arch)


def _shapes(path):
    with open_checkpoint(path) as ckpt:
        return {name: ckpt.info(name).shape for name in ckpt.names()}


def _size(fixture):
    return fixture.meta["image_size"], fixture.meta["image_size"]


def _golden(fixture, table, drop_background=True):
    background = table.background_class if drop_background else None
    return {name: np.delete(value, background, axis=1) if value.ndim == 2 and background is not None else value
            for name, value in fixture.golden().items()}


def _off(golden, outputs):
    assert set(outputs) >= set(golden), sorted(set(golden) - set(outputs))
    results = {name: oracle.compare(golden[name], outputs[name]) for name in golden}
    return {name: (r.max_abs, r.bound) for name, r in results.items() if not r.ok or r.top_k.get(1, 1.0) < 1.0}


def _run_torch(net, images):
    with torch.no_grad():
        points = net(torch.from_numpy(np.ascontiguousarray(images.transpose(NHWC_TO_NCHW))))
    return {name: (v.numpy().transpose(NCHW_TO_NHWC) if v.ndim == 4 else v.numpy()) for name, v in points.items()}


def _torch_port(fixture, table, **options):
    shapes = _shapes(fixture.v2)
    with open_checkpoint(fixture.v2) as ckpt:
        plan = mapping.plan(shapes, table, "torch", input_size=_size(fixture), **options)
        return plan, nets.plan_state_dict(plan, ckpt.read)


@pytest.mark.parametrize("arch", ARCHS)
def test_committed_fixture_is_the_zoo_sized_network(arch):
    fixture, table = _fixture(arch), mapping.load_table(arch)
    shapes = _shapes(fixture.v2)
    assert mapping.detect_architecture(shapes) == arch
    scope = table.scope
    if arch == "mobilenet_v1":  # mobilenet_v1_0.25_128: max(int(32 * 0.25), 8) = 8 ... 1024 * 0.25 = 256
        assert shapes[f"{scope}/Conv2d_0/weights"] == (3, 3, 3, 8)
        assert shapes[f"{scope}/Conv2d_1_depthwise/depthwise_weights"] == (3, 3, 8, 1)
        assert shapes[f"{scope}/Conv2d_13_pointwise/weights"] == (1, 1, 256, 256)
        assert shapes[f"{scope}/Logits/Conv2d_1c_1x1/weights"] == (1, 1, 256, 1001)
    else:  # mobilenet_v2_0.35_96: _make_divisible(32 * 0.35, 8) = 16, Conv_1 kept at 1280
        assert shapes[f"{scope}/Conv/weights"] == (3, 3, 3, 16)
        assert f"{scope}/expanded_conv/expand/weights" not in shapes
        assert shapes[f"{scope}/expanded_conv/project/weights"] == (1, 1, 16, 8)
        assert shapes[f"{scope}/expanded_conv_1/expand/weights"] == (1, 1, 8, 48)
        assert shapes[f"{scope}/expanded_conv_16/project/weights"] == (1, 1, 336, 112)
        assert shapes[f"{scope}/Conv_1/weights"] == (1, 1, 112, 1280)
    assert all(name.startswith(f"{scope}/") for name in shapes)
    assert not any(name.endswith("/biases") and "Logits" not in name for name in shapes)  # batch norm, no biases


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_module_and_onnx_match_tf_golden(arch, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX target runs in onnxruntime")
    from converter.runtimes import onnx as runtime
    from converter.writers import onnx as writer

    fixture, table = _fixture(arch), mapping.load_table(arch)
    plan, state = _torch_port(fixture, table)
    golden = _golden(fixture, table)
    assert not _off(golden, _run_torch(nets.build(plan, state, device="cpu"), fixture.input))
    onnx_plan = mapping.plan(_shapes(fixture.v2), table, "onnx", input_size=_size(fixture))
    with open_checkpoint(fixture.v2) as ckpt:
        writer.save_onnx(onnx_plan, ckpt.read, tmp_path / "model.onnx", outputs=table.facts.end_points)
    outputs, _ = runtime.run(tmp_path / "model.onnx", onnx_plan, fixture.input)
    assert not _off(golden, outputs)


def test_relu6_is_a_clip_in_onnx(tmp_path):
    onnx = pytest.importorskip("onnx", reason="writes the ONNX target")
    from converter.writers import onnx as writer

    fixture, table = _fixture("mobilenet_v1"), mapping.load_table("mobilenet_v1")
    plan = mapping.plan(_shapes(fixture.v2), table, "onnx", input_size=_size(fixture))
    for dtype, numpy_dtype in (("float32", np.float32), ("float16", np.float16)):
        with open_checkpoint(fixture.v2) as ckpt:
            model = writer.build_model(plan, ckpt.read, dtype=dtype)
        clips = [node for node in model.graph.node if node.op_type == "Clip"]
        assert len(clips) == 27 and not any(node.op_type == "Relu" for node in model.graph.node)
        constants = {node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
                     for node in model.graph.node if node.op_type == "Constant"}
        low, high = (constants[name] for name in clips[0].input[1:])
        assert (float(low), float(high)) == (0.0, 6.0) and low.dtype == high.dtype == numpy_dtype


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layout", ("model.h5", "model.weights.h5"))
def test_keras_applications_match_tf_golden(arch, layout, tmp_path):
    # keras.applications' own MobileNet / MobileNetV2 at the checkpoint's width (alpha) running the same weights:
    # a second, independent definition of each network agrees with the TF-Slim reference within the oracle
    pytest.importorskip("keras", reason="runs keras.applications")
    from converter.convert import convert
    from converter.runtimes import keras as runtime

    fixture, table = _fixture(arch), mapping.load_table(arch)
    result = convert(fixture.v2, to="keras", output=tmp_path / layout, input_size=_size(fixture))
    outputs, _ = runtime.run(result.output, result.plan, fixture.input)  # loads strictly
    assert not _off(_golden(fixture, table), outputs)


def test_reference_reproduces_the_golden_outputs():
    # the reference network (converter.slim_nets) restores the committed checkpoints by their names, finds their
    # width from their shapes, and computes what it computed when they were written
    pytest.importorskip("tensorflow", reason="runs the TF-Slim reference")
    from converter import reference

    for arch in ARCHS:
        fixture = _fixture(arch)
        outputs = reference.run_reference(fixture.v2, fixture.input, architecture=arch)
        golden = fixture.golden()
        assert set(outputs) == set(golden)
        assert not _off(golden, outputs)


@pytest.mark.parametrize("multiplier", V1_WIDTHS + (0.3, 0.6, 1.2))
def test_mobilenet_v1_width_is_found_from_the_channels(multiplier):
    shapes = {f"MobilenetV1/{layer}/weights": (1, 1, 3, channels)
              for layer, channels in mobilenet_v1.depths(multiplier).items()}
    found = mobilenet_v1.network_options(shapes)["depth_multiplier"]
    assert mobilenet_v1.depths(found) == mobilenet_v1.depths(multiplier)
    if multiplier in V1_WIDTHS:
        assert found == multiplier


@pytest.mark.parametrize("multiplier", V2_WIDTHS + (0.6, 0.9))
@pytest.mark.parametrize("finegrain", (True, False))
def test_mobilenet_v2_width_and_finegrain_are_found_from_the_channels(multiplier, finegrain):
    depths = mobilenet_v2.depths(multiplier, finegrain)
    shapes = {f"MobilenetV2/{layer}/weights": (1, 1, 3, channels) for layer, channels in depths.items()}
    options = mobilenet_v2.network_options(shapes)
    assert mobilenet_v2.depths(options["depth_multiplier"], options.get("finegrain_classification_mode", False)) == depths
    assert options.get("finegrain_classification_mode", False) == (finegrain and multiplier < 1)


def test_channels_no_width_gives_are_refused():
    from converter import reference

    shapes = {f"MobilenetV2/{layer}/weights": (1, 1, 3, channels)
              for layer, channels in mobilenet_v2.depths(1.0).items()}
    shapes["MobilenetV2/expanded_conv_5/project/weights"] = (1, 1, 3, 40)
    assert mobilenet_v2.network_options(shapes) == {}
    with pytest.raises(ConvertError, match="fit no width multiplier of mobilenet_v2"):
        reference.network_options("mobilenet_v2", shapes)


def test_zoo_widths_match_the_published_channels():
    # the published checkpoints' channel counts (mobilenet_v1_0.25: 8 ... 256; mobilenet_v2_0.35: 16, 8, ...
    # 112, 1280; mobilenet_v2_1.4: 48 ... 448, 1792), and keras.applications' alpha rule for the same widths
    assert list(mobilenet_v1.depths(0.25).values()) == [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]
    assert list(mobilenet_v1.depths(0.75).values())[-1] == 768
    v2 = mobilenet_v2.depths(0.35, True)
    assert (v2["Conv"], v2["expanded_conv/project"], v2["expanded_conv_16/project"], v2["Conv_1"]) == (16, 8, 112, 1280)
    v2 = mobilenet_v2.depths(1.4)
    assert (v2["Conv"], v2["expanded_conv/project"], v2["expanded_conv_16/project"], v2["Conv_1"]) == (48, 24, 448, 1792)
    assert mobilenet_v2.depths(0.35)["Conv_1"] == 448  # without finegrain the last layer shrinks too


def test_torchvision_mobilenet_v2_is_close_and_why():
    # torchvision's mobilenet_v2(width_mult) loads the file strictly and drifts; with TensorFlow's 'SAME' pads
    # (0 before, 1 after) on its stride-2 convolutions and slim's epsilon it computes TF-Slim's network: the
    # table's restriction names the whole difference
    pytest.importorskip("torchvision", reason="compares with torchvision's mobilenet_v2")
    from converter.runtimes import torch as runtime

    fixture, table = _fixture("mobilenet_v2"), mapping.load_table("mobilenet_v2")
    plan, state = _torch_port(fixture, table)
    golden = _golden(fixture, table)
    model = runtime._model(torch, "torchvision", plan, state)
    model.load_state_dict(state, strict=True)
    model.eval()
    images = torch.from_numpy(np.ascontiguousarray(fixture.input.transpose(NHWC_TO_NCHW)))
    with torch.no_grad():
        drift = oracle.compare(golden["Logits"], model(images).numpy())
    assert not drift.ok

    class SamePad(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), self.conv.weight,
                                              self.conv.bias, 2, 0, 1, self.conv.groups)

    def as_tensorflow(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Conv2d) and child.stride == (2, 2):
                assert child.padding == (1, 1)  # torchvision's symmetric padding
                setattr(module, name, SamePad(child))
            elif isinstance(child, torch.nn.BatchNorm2d):
                assert child.eps == 1e-5
                child.eps = table.facts.batch_norm_epsilon
            else:
                as_tensorflow(child)

    as_tensorflow(model)
    with torch.no_grad():
        assert oracle.compare(golden["Logits"], model(images).numpy()).ok


def test_a_missing_relu6_is_caught(tmp_path):
    # the same table with plain ReLU where slim has ReLU6: every shape fits, the outputs do not
    fixture, table = _fixture("mobilenet_v1"), mapping.load_table("mobilenet_v1")
    raw = table_schema.read(table.path)
    broken = copy.deepcopy(raw)
    for kind in broken["kinds"].values():
        if kind["compute"].get("activation") == "relu6":
            kind["compute"]["activation"] = "relu"
    path = tmp_path / "relu.yaml"
    path.write_text(yaml.safe_dump(broken))
    plan, state = _torch_port(fixture, mapping.load_table(path))
    off = _off(_golden(fixture, table), _run_torch(nets.build(plan, state, device="cpu"), fixture.input))
    assert "Conv2d_1_pointwise" in off and "Logits" in off


def test_a_missing_residual_sum_is_caught(tmp_path):
    # V2's residual sums without activation: a table that forgets one is off from that block on
    fixture, table = _fixture("mobilenet_v2"), mapping.load_table("mobilenet_v2")
    raw = table_schema.read(table.path)
    broken = copy.deepcopy(raw)
    node = next(node for node in broken["graph"] if node.get("name") == "expanded_conv_2")
    node["nodes"] = node.pop("add")[1]
    path = tmp_path / "no_residual.yaml"
    path.write_text(yaml.safe_dump(broken))
    plan, state = _torch_port(fixture, mapping.load_table(path))
    off = _off(_golden(fixture, table), _run_torch(nets.build(plan, state, device="cpu"), fixture.input))
    assert "expanded_conv_2" in off and "Logits" in off


def test_fine_tune_class_count_scope_and_ema(finetune):
    # 5 classes (no background), another width, input and scope: every class kept; EMA weights verified too
    pytest.importorskip("onnxruntime", reason="verify runs the ONNX port")
    from converter.verify import verify

    fixture = finetune("mobilenet_v1_flowers")
    table = mapping.load_table("mobilenet_v1")
    plan, state = _torch_port(fixture, table)
    assert plan.network.scope == "FlowerNet" and plan.background.port_classes == 5
    assert not _off(_golden(fixture, table, drop_background=False),
                    _run_torch(nets.build(plan, state, device="cpu"), fixture.input))
    report = verify(fixture.train, [], batch=1, input_size=_size(fixture), ema=True)
    assert report.ok, report.table()
    assert {backend.target for backend in report.backends} == {"torch", "keras", "onnx"}


def test_detection_backbone_converts_headless(finetune, tmp_path):
    # FeatureExtractor/MobilenetV2 without Logits, an extra SSD layer under it and BoxPredictor_0 beside it
    pytest.importorskip("onnxruntime", reason="the ONNX target runs in onnxruntime")
    from converter.convert import convert
    from converter.runtimes import onnx as runtime

    fixture = finetune("mobilenet_v2_ssd")
    table = mapping.load_table("mobilenet_v2")
    shapes = _shapes(fixture.v2)
    assert mapping.detect_architecture(shapes) == "mobilenet_v2"
    with pytest.raises(MappingError) as strict:
        mapping.plan(shapes, table, "torch")
    message = str(strict.value)
    assert "has no Logits (FeatureExtractor/MobilenetV2/Logits/Conv2d_1c_1x1)" in message and "--no-top" in message
    assert "outside the network under BoxPredictor_0/" in message
    assert "outside the network under FeatureExtractor/MobilenetV2/layer_19_1_Conv2d_2_1x1_256/" in message
    with pytest.raises(MappingError, match="--lenient converts without them"):
        mapping.plan(shapes, table, "torch", drop=(mapping.TOP,))
    golden = fixture.golden()
    assert "Logits" not in golden
    result = convert(fixture.v2, to="torch", output=tmp_path / "backbone.pth", include_top=False, strict=False,
                     input_size=_size(fixture))
    outside = result.plan.outside()
    assert sorted(outside) == ["BoxPredictor_0", "FeatureExtractor/MobilenetV2/layer_19_1_Conv2d_2_1x1_256"]
    assert len(result.plan.skipped[mapping.OUTSIDE]) == 6 and mapping.UNMAPPED not in result.plan.skipped
    state = torch.load(result.output, weights_only=True)
    assert not _off(golden, _run_torch(nets.build(result.plan, state, device="cpu"), fixture.input))
    result = convert(fixture.v2, to="onnx", output=tmp_path / "backbone.onnx", include_top=False, strict=False,
                     input_size=_size(fixture), outputs=list(golden))
    outputs, _ = runtime.run(result.output, result.plan, fixture.input)
    assert not _off(golden, outputs)
    pytest.importorskip("keras", reason="runs keras.applications")
    from converter.runtimes import keras as keras_runtime

    result = convert(fixture.v2, to="keras", output=tmp_path / "backbone.weights.h5", include_top=False,
                     strict=False, input_size=_size(fixture))
    outputs, _ = keras_runtime.run(result.output, result.plan, fixture.input)  # include_top=False
    assert not _off(golden, outputs)


def test_detection_backbone_verifies_headless(finetune):
    pytest.importorskip("onnxruntime", reason="verify runs the ONNX port")
    from converter.verify import verify

    fixture = finetune("mobilenet_v2_ssd")
    report = verify(fixture.v2, [], batch=1, input_size=_size(fixture), include_top=False)
    outputs = {check.name for check in report.checks if check.kind == "output" and check.backend.startswith("onnx")}
    assert outputs == {"expanded_conv_2", "expanded_conv_5", "expanded_conv_12", "expanded_conv_16", "Conv_1"}
    assert report.ok, report.table()
    verdicts = {backend.target for backend in report.backends if not backend.advisory}
    assert verdicts == {"torch", "keras", "onnx"}


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.update(outside="layer_19_*"), "`outside` must be a list of scope patterns"),
    (lambda raw: raw["targets"]["keras"].update(width=1.0), "targets.keras.width must be a name"),
    (lambda raw: raw["targets"]["keras"].update(classifier=["conv_preds"]), "targets.keras.classifier must be a name"),
    (lambda raw: raw["targets"]["torch"]["torchvision"].update(width=2), "aux and width (names)"),
    (lambda raw: raw["kinds"]["conv_norm_relu6"]["compute"].update(activation="relu7"),
     "compute.activation must be one of relu, relu6"),
])
def test_schema_additions_are_validated(change, message):
    # each on its own: a table's type errors stop validation before the cross-checks
    raw = table_schema.read(mapping.load_table("mobilenet_v2").path)
    assert not mapping.validate(raw)
    change(raw)
    assert message in "\n".join(mapping.validate(raw))


def test_batch_converts_and_verifies_both(tmp_path):
    # a fleet of both MobileNets, every target, each output verified against TF-Slim (at the tables' 224x224:
    # nothing in a checkpoint says the size it was trained at, and both networks take any)
    pytest.importorskip("tensorflow", reason="--verify runs the TF-Slim reference")
    pytest.importorskip("onnxruntime", reason="--verify runs the ONNX outputs")
    pytest.importorskip("keras", reason="--verify runs keras.applications")
    import shutil

    from converter.batch import run_batch

    tree = tmp_path / "fleet"
    for arch in ARCHS:
        (tree / arch).mkdir(parents=True)
        for path in (FIXTURES / arch).glob("model.ckpt.*"):
            shutil.copy(path, tree / arch / path.name)
    report = run_batch([tree], tmp_path / "out", targets="torch,onnx,keras", verify=True, jobs=2)
    records = {record.id: record.to_dict() for record in report.models}
    assert set(records) == {f"{arch}/model.ckpt" for arch in ARCHS}
    assert report.ok, records
    for arch in ARCHS:
        record = records[f"{arch}/model.ckpt"]
        assert record["architecture"] == arch
        for target in ("torch", "onnx", "keras"):
            entry = record["targets"][target]
            # within the oracle's bound, relative to the largest map (ReLU6 caps V1's at 6, V2's sums reach ~15)
            assert entry["status"] == "ok" and 0 < entry["max_error"] < 2e-3, (arch, target, entry)
