"""Mapping tables: validation that reports everything, plans that check everything before writing."""

import copy

import numpy as np
import pytest
import yaml

from converter import mapping, table_schema, transforms
from converter.checkpoint import open_checkpoint
from converter.errors import MappingError


@pytest.fixture(scope="module")
def table():
    return mapping.load_table("inception_v3")


@pytest.fixture(scope="module")
def raw_table(table):
    return table_schema.read(table.path)


def _shapes(path):
    with open_checkpoint(path) as ckpt:
        return {name: ckpt.info(name).shape for name in ckpt.names()}


@pytest.fixture(scope="module")
def shapes(small):
    return _shapes(small.v2)


def test_builtin_tables_load_and_validate():
    assert "inception_v3" in mapping.builtin_tables()
    for name in mapping.builtin_tables():
        assert mapping.validate(table_schema.read(mapping.load_table(name).path)) == []


@pytest.mark.parametrize(
    "target, aux, count",
    [("torch", True, 580), ("torch", False, 566), ("keras", True, 4 * 94 + 2), ("onnx", True, 5 * 96 + 2 * 2)],
)
def test_plan_covers_every_target_tensor(table, shapes, target, aux, count):
    plan = mapping.plan(shapes, table, target, aux=aux)
    keys = [entry.key for entry in plan.entries]
    assert len(keys) == len(set(keys)) == count


def test_torch_keys_and_shapes_equal_torchvision(table):
    torchvision = pytest.importorskip("torchvision", reason="compares with torchvision's Inception3")
    reference = pytest.importorskip("converter.reference", reason="full-size slim shapes come from tf-slim")
    pytest.importorskip("tensorflow", reason="full-size slim shapes come from tf-slim")
    full_shapes = reference.variable_shapes("inception_v3")
    plan = mapping.plan(full_shapes, table, "torch")
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {entry.key: entry.shape for entry in plan.entries} == expected


def test_validation_reports_every_problem_at_once(raw_table):
    broken = copy.deepcopy(raw_table)
    broken["kinds"]["conv_bn_nogamma_relu"]["torch"]["conv.weight"]["transform"] = "hwio_to_ohwi"
    broken["kinds"]["logits"]["torch"]["bias"] = {"from": "bias"}
    broken["layers"]["Mixed_5b/Branch_0/Conv2d_0a_1x1"]["kind"] = "conv"
    del broken["layers"]["Conv2d_2a_3x3"]
    broken["facts"]["end_points"].append("Mixed_9z")
    problems = mapping.validate(broken)
    joined = "\n".join(problems)
    for expected in ("hwio_to_ohwi", "`from: bias`", "Mixed_5b/Branch_0/Conv2d_0a_1x1", "Conv2d_2a_3x3", "Mixed_9z"):
        assert expected in joined
    assert len(problems) >= 5


def test_graph_references_are_checked_on_the_parsed_graph(raw_table):
    broken = copy.deepcopy(raw_table)
    mixed = next(node for node in broken["graph"] if node.get("name") == "Mixed_5b")
    mixed["concat"][0][0]["input"] = "Mixed_5b"  # inside Mixed_5b: its output does not exist yet
    broken["graph"].append({"layer": "Conv2d_1a_3x3"})
    assert mapping.validate(broken) == ["graph: input 'Mixed_5b' is not an earlier named node",
                                        "layers: Conv2d_1a_3x3 is used 2 times in the graph (must be once)"]
    mixed["concat"][0][0]["input"] = "Conv2d_1a_3x3"  # not a named node at all
    broken["graph"].pop()
    assert mapping.validate(broken) == ["graph: input 'Conv2d_1a_3x3' is not an earlier named node"]


def test_a_malformed_node_does_not_hide_the_references_of_the_rest(raw_table):
    broken = copy.deepcopy(raw_table)
    broken["graph"][0]["max_pool"] = [3, 3]  # a layer and a pool at once: graph.parse cannot build it
    broken["facts"]["end_points"].append("Mixed_9z")
    problems = mapping.validate(broken)
    assert problems[0].startswith("graph: node {") and "exactly one of layer" in problems[0]
    assert problems[1:] == ["layers: Conv2d_1a_3x3 is used 0 times in the graph (must be once)",
                            "facts.end_points: Mixed_9z is not a named graph node"]


def test_invalid_table_file_is_one_error_naming_the_file(tmp_path, raw_table):
    broken = copy.deepcopy(raw_table)
    broken["graph"].append({"avg_pool": [3, 3], "padding": "FULL"})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(MappingError, match="broken.yaml.*invalid mapping table") as error:
        mapping.load_table(path)
    assert "FULL" in str(error.value)
    with pytest.raises(MappingError, match="no mapping table 'resnet_v9'"):
        mapping.load_table("resnet_v9")


def test_plan_gathers_unmapped_missing_and_shape_problems(table, shapes):
    broken = dict(shapes)
    broken["InceptionV3/Extra/weights"] = (3,)
    del broken["InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/BatchNorm/beta"]
    broken["InceptionV3/Mixed_6c/Branch_1/Conv2d_0b_1x7/BatchNorm/moving_mean"] = (7,)
    with pytest.raises(MappingError) as error:
        mapping.plan(broken, table, "torch")
    message = str(error.value)
    assert "3 problems" in message
    assert "unmapped variable InceptionV3/Extra/weights" in message
    assert "missing variable InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/BatchNorm/beta" in message
    assert "Mixed_6c/Branch_1/Conv2d_0b_1x7/BatchNorm/moving_mean: shape [7] disagrees on `out`" in message
    lenient = mapping.plan({**shapes, "InceptionV3/Extra/weights": (3,)}, table, "torch", strict=False)
    assert lenient.skipped["unmapped"] == ["InceptionV3/Extra/weights"]


def test_detection_and_outer_prefix(table, shapes):
    assert mapping.detect_architecture(shapes) == "inception_v3"
    assert mapping.detect_architecture({"a/weights": (1,)}) is None
    prefixed = {f"tower_0/{name}": shape for name, shape in shapes.items()}
    assert mapping.detect_architecture(prefixed) == "inception_v3"
    plan = mapping.plan(prefixed, table, "torch")
    assert plan.network.prefix == "tower_0/"
    assert all(e.source is None or e.source.startswith("tower_0/InceptionV3/") for e in plan.entries)


def test_training_checkpoint_skips_slots_and_uses_ema_on_request(table, small):
    shapes = _shapes(small.train)
    plain = mapping.plan(shapes, table, "torch")
    assert len(plain.skipped["optimizer slots"]) == 2 * 196
    assert plain.skipped["training state"] == ["global_step"]
    assert len(plain.skipped["ema shadows"]) == 388
    assert not any(e.source and e.source.endswith(mapping.EMA_SUFFIX) for e in plain.entries)
    ema = mapping.plan(shapes, table, "torch", ema=True)
    sources = [e.source for e in ema.entries if e.source]
    assert sources and all(s.endswith(mapping.EMA_SUFFIX) for s in sources)
    with pytest.raises(MappingError, match="no /ExponentialMovingAverage shadows"):
        mapping.plan(_shapes(small.v2), table, "torch", ema=True)


def test_background_class_dropped_unless_kept(table, shapes, small):
    with open_checkpoint(small.v2) as ckpt:
        dropped = dict(mapping.plan(shapes, table, "torch").tensors(ckpt.read))
        kept = dict(mapping.plan(shapes, table, "torch", background="keep").tensors(ckpt.read))
        logits = ckpt.read("InceptionV3/Logits/Conv2d_1c_1x1/weights")
        biases = ckpt.read("InceptionV3/Logits/Conv2d_1c_1x1/biases")
    assert dropped["fc.weight"].shape == (1000, logits.shape[2])
    np.testing.assert_array_equal(dropped["fc.weight"], logits[0, 0, :, 1:].T)
    np.testing.assert_array_equal(dropped["fc.bias"], biases[1:])
    np.testing.assert_array_equal(kept["fc.weight"], logits[0, 0].T)
    assert kept["AuxLogits.fc.bias"].shape == (1001,)


def test_fills_and_transforms(table, shapes, small):
    with open_checkpoint(small.v2) as ckpt:
        tensors = dict(mapping.plan(shapes, table, "torch").tensors(ckpt.read))
        kernel = ckpt.read("InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights")
    np.testing.assert_array_equal(tensors["Mixed_6b.branch7x7_2.conv.weight"], kernel.transpose(3, 2, 0, 1))
    assert tensors["Mixed_6b.branch7x7_2.conv.weight"].shape[2:] == (1, 7)
    assert np.all(tensors["Mixed_6b.branch7x7_2.bn.weight"] == 1.0)
    assert tensors["Mixed_6b.branch7x7_2.bn.num_batches_tracked"].dtype == np.int64


def test_transforms_refuse_layouts_they_do_not_take():
    with pytest.raises(ValueError, match=r"\[1, 1, in, out\]"):
        transforms.get("conv1x1_to_linear").shape((3, 3, 8, 4))
    with pytest.raises(ValueError, match=r"\[kh, kw, in, out\]"):
        transforms.get("hwio_to_oihw").shape((8, 4))
    with pytest.raises(MappingError, match="unknown transform 'squeeze'"):
        transforms.get("squeeze")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t["facts"].__setitem__("end_points", 5), "facts.end_points must be a list"),
        (lambda t: t["facts"].__setitem__("input", [299, 299]), "facts.input must be a mapping"),
        (lambda t: t.__setitem__("targets", ["torch"]), "`targets` must be a mapping"),
        (lambda t: t["kinds"]["conv_bn_nogamma_relu"].__setitem__("compute", "conv"), "compute.op must be one of"),
        (lambda t: t["graph"].append({"layer": 3}), "invalid mapping table"),
        (lambda t: t["layers"]["Conv2d_1a_3x3"].__setitem__("keras", "conv2d"), "must map each role"),
    ],
)
def test_mistyped_user_tables_are_errors_not_crashes(tmp_path, raw_table, change, expected):
    broken = copy.deepcopy(raw_table)
    change(broken)
    path = tmp_path / "mistyped.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(MappingError, match="mistyped.yaml") as error:
        mapping.load_table(path)
    assert expected in str(error.value)
