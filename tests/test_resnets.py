"""TF-Slim's ResNets: generated tables, checked against tf-slim's own variables; depths told apart by their
unit counts; ResNet-v2's pre-activation wiring; keras.applications' ResNetV2 layer order and drift; and
`batch --verify` over a tree of both families.

Every target of the tables with a fixture runs against TF-Slim in tests/test_zoo.py.
"""

import copy
import dataclasses

import numpy as np
import pytest
import yaml

from conftest import batch_verify_tree
from converter import mapping, oracle, table_schema
from converter.checkpoint import open_checkpoint
from converter.mappings import generate

RESNETS = sorted(generate.GENERATED)
KERAS_RESNETS = [name for name in RESNETS if "keras" in mapping.load_table(name).targets]
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
# the input size keras.applications' models are built at (their weights do not depend on it)
GRAPH_SIZE = 64
WAIT_S = 600


@pytest.fixture(scope="module")
def variables(zoo):
    """``variables(architecture)``: ``{name: shape}`` of the checkpoint tf-slim's network wrote (its fixture)."""
    found = {}

    def get(architecture):
        if architecture not in found:
            with open_checkpoint(zoo(architecture).v2) as ckpt:
                found[architecture] = {name: ckpt.info(name).shape for name in ckpt.names()}
        return found[architecture]

    return get


def test_committed_tables_are_the_generated_ones(tmp_path):
    assert set(RESNETS) <= set(mapping.builtin_tables())
    assert generate.stale() == [], "a ResNet table was edited by hand: edit mappings/generate.py and rerun it"
    # the check can fail: a table one row short is stale
    for name in RESNETS:
        (tmp_path / f"{name}.yaml").write_text(generate.generate(name))
    text = generate.generate("resnet_v2_101")
    (tmp_path / "resnet_v2_101.yaml").write_text(text.replace(text.splitlines()[-1] + "\n", ""))
    assert generate.stale(tmp_path) == ["resnet_v2_101"]


def test_the_schema_additions_are_validated():
    raw = table_schema.read(mapping.load_table("resnet_v2_50").path)

    def problems(change):
        broken = copy.deepcopy(raw)
        change(broken)
        return "\n".join(mapping.validate(broken))

    assert "kinds.norm_relu: op batch_norm is the batch norm itself; drop `batch_norm: true`" in problems(
        lambda table: table["kinds"]["norm_relu"]["compute"].__setitem__("batch_norm", True))
    assert "facts.batch_norm_epsilon must be a positive number" in problems(
        lambda table: table["facts"].pop("batch_norm_epsilon"))
    assert f"`detect_absent` repeats `detect` variables: {raw['detect'][0]}" in problems(
        lambda table: table["detect_absent"].append(table["detect"][0]))
    assert "targets.keras.drift must be a sentence" in problems(
        lambda table: table["targets"]["keras"].__setitem__("drift", ["not", "a", "sentence"]))
    assert problems(lambda table: None) == ""


def test_a_batch_norm_layer_names_what_each_target_needs(zoo, tmp_path):
    pytest.importorskip("onnx", reason="builds the ONNX graph")
    pytest.importorskip("torch", reason="builds the exact module")
    from converter.errors import ConvertError, MappingError
    from converter.nets import torch as nets
    from converter.writers import onnx as writer

    fixture = zoo("resnet_v2_50")
    raw = table_schema.read(mapping.load_table("resnet_v2_50").path)
    kind = raw["kinds"]["norm_relu"]
    kind["onnx"] = {f"BatchNorm/{key}": spec for key, spec in kind["onnx"].items()}  # a conv_bn kind's names
    kind["torch"] = {f"bn.{key}" if key != "weight" else key: spec for key, spec in kind["torch"].items()}
    (tmp_path / "renamed.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    renamed = mapping.load_table(tmp_path / "renamed.yaml")
    size = (fixture.meta["image_size"],) * 2
    with open_checkpoint(fixture.v2) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
        with pytest.raises(ConvertError, match="op batch_norm.*exactly gamma, beta, moving_mean, moving_variance"):
            writer.build_model(mapping.plan(shapes, renamed, "onnx", input_size=size), ckpt.read)
        with pytest.raises(MappingError, match="op batch_norm.*tensors of one torch module"):
            nets.build(mapping.plan(shapes, renamed, "torch", input_size=size), device="cpu")


@pytest.mark.parametrize("architecture", RESNETS)
def test_the_table_binds_every_variable_of_tf_slims_network(variables, architecture):
    shapes = variables(architecture)
    table = mapping.load_table(architecture)
    for target in table.targets:
        plan = mapping.plan(shapes, table, target)  # strict: an unmapped or missing variable is an error
        assert not plan.skipped, plan.skipped
        assert len({entry.key for entry in plan.entries}) == len(plan.entries)
    consumed = {entry.source for entry in mapping.plan(shapes, table, "onnx").entries}
    assert consumed == set(shapes)


@pytest.mark.parametrize("architecture", RESNETS)
def test_each_depth_is_detected_as_itself_under_any_scope(variables, architecture):
    shapes = variables(architecture)
    matching = [name for name in mapping.builtin_tables()
                if mapping.find_networks(shapes, mapping.load_table(name))]
    assert matching == [architecture]
    scope = mapping.load_table(architecture).scope
    moved = {"tower_0/MyNet/" + name[len(scope) + 1:]: shape for name, shape in shapes.items()}
    assert mapping.detect_architecture(moved) == architecture
    assert mapping.locate(moved).root == "tower_0/MyNet/"


def test_deeper_resnets_hold_every_variable_of_shallower_ones(variables):
    # which is why detection also needs the rows that must be absent
    deeper = variables("resnet_v1_101")
    relative = {name.partition("/")[2] for name in variables("resnet_v1_50")}
    assert relative < {name.partition("/")[2] for name in deeper}
    shallow = mapping.load_table("resnet_v1_50")
    assert not mapping.find_networks(deeper, shallow)
    assert mapping.find_networks(deeper, dataclasses.replace(shallow, detect_absent=()))
    # ResNet-101 cut to ResNet-50's unit counts is a ResNet-50 under another scope
    cut = {name: shape for name, shape in deeper.items()
           if not any(f"block3/unit_{unit}/" in name for unit in range(7, 24))}
    assert mapping.detect_architecture(cut) == "resnet_v1_50"


def _graph_block(raw, name):
    return next(node for node in raw["graph"] if node.get("name") == name)["nodes"]


def _identity_shortcut_from_preact(raw):
    # block2's unit_2 with its preact before the sum, so that the identity shortcut takes preact, not the input
    nodes = _graph_block(raw, "block2")
    unit = nodes[2]
    assert unit["add"][0] == [] and unit["add"][1][0]["layer"].endswith("unit_2/bottleneck_v2/preact")
    nodes[2:3] = [unit["add"][1][0], {"add": [[], unit["add"][1][1:]]}]


def _projection_shortcut_from_input(raw):
    # block2's unit_1 with preact in the residual branch only, so that the projection takes the unit's input
    nodes = _graph_block(raw, "block2")
    preact, unit = nodes[0], nodes[1]
    assert preact["layer"].endswith("unit_1/bottleneck_v2/preact")
    nodes[0:2] = [{"add": [unit["add"][0], [preact] + unit["add"][1]]}]


def _swapped_units(raw):
    # block3's unit_2 and unit_3 exchange their torch names: the same shapes, so the file loads
    for layer in ("preact", "conv1", "conv2", "conv3"):
        first, second = (raw["layers"][f"block3/unit_{n}/bottleneck_v2/{layer}"] for n in (2, 3))
        first["torch"], second["torch"] = second["torch"], first["torch"]


WIRINGS = {
    "identity shortcut from preact": (_identity_shortcut_from_preact, "block2"),
    "projection shortcut from the input": (_projection_shortcut_from_input, "block2"),
    "units swapped": (_swapped_units, "block3"),
}


def _exact(plan, state, images):
    torch = pytest.importorskip("torch", reason="runs the exact module")
    from converter.nets import torch as nets

    net = nets.build(plan, state, device="cpu")  # strict: every tensor loads
    with torch.no_grad():
        points = net(torch.from_numpy(np.ascontiguousarray(images.transpose(NHWC_TO_NCHW))))
    return {name: value.numpy().transpose(NCHW_TO_NHWC) if value.ndim == 4 else value.numpy()
            for name, value in points.items()}


def _off(golden, outputs):
    return {name for name in golden if not oracle.compare(golden[name], outputs[name]).ok}


@pytest.mark.parametrize("wiring", WIRINGS)
def test_a_wrong_pre_activation_wiring_is_caught(zoo, tmp_path, wiring):
    pytest.importorskip("torch", reason="runs the exact module")
    from converter.nets import torch as nets

    fixture, table = zoo("resnet_v2_50"), mapping.load_table("resnet_v2_50")
    size = (fixture.meta["image_size"],) * 2
    mutate, first_wrong = WIRINGS[wiring]
    raw = table_schema.read(table.path)
    mutate(raw)
    assert mapping.validate(raw) == [], "the wrong wiring is a valid table: only the outputs can tell"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    wrong = mapping.load_table(tmp_path / "wrong.yaml")
    golden = fixture.golden()
    golden["Logits"] = np.delete(golden["Logits"], table.background_class, axis=1)
    with open_checkpoint(fixture.v2) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
        right_plan = mapping.plan(shapes, table, "torch", input_size=size)
        wrong_plan = mapping.plan(shapes, wrong, "torch", input_size=size)
        right_state = nets.plan_state_dict(right_plan, ckpt.read)
        wrong_state = nets.plan_state_dict(wrong_plan, ckpt.read)
    assert not _off(golden, _exact(right_plan, right_state, fixture.input))
    # the wrong network, or the right one holding a wrongly named file: it loads, and computes something else
    plan, state = (right_plan, wrong_state) if wiring == "units swapped" else (wrong_plan, right_state)
    off = _off(golden, _exact(plan, state, fixture.input))
    blocks = ["block1", "block2", "block3", "block4", "Logits"]
    assert off == {point for point in golden if blocks.index(point) >= blocks.index(first_wrong)}


@pytest.mark.parametrize("architecture", KERAS_RESNETS)
def test_keras_order_and_names_are_keras_applications_own(variables, architecture):
    keras = pytest.importorskip("keras", reason="builds keras.applications' ResNetV2")
    table = mapping.load_table(architecture)
    spec = table.targets["keras"]
    model = getattr(keras.applications, spec.application)(weights=None, input_shape=(GRAPH_SIZE, GRAPH_SIZE, 3),
                                                             classifier_activation=None)
    layers = [layer for layer in model.layers if layer.weights]
    assert [layer.name for layer in layers] == list(spec.order)
    roles = {name: role for row in table.layers.values() for role, name in row.name("keras").items()}
    for layer in layers:
        assert roles[layer.name].replace("_", "") == type(layer).__name__.lower(), layer.name
    assert all(model.get_layer(name) is not None for name in spec.end_points.values())
    plan = mapping.plan(variables(architecture), table, "keras")
    planned = {entry.key: entry.shape for entry in plan.entries}
    built = {f"{layer.name}/{weight.path.rsplit('/', 1)[-1]}": tuple(weight.shape)
             for layer in layers for weight in layer.weights}
    assert planned == built  # every weight, the same shapes: a strict load


def test_keras_resnet_v2_drifts_only_by_its_stem_pool(zoo, tmp_path):
    pytest.importorskip("keras", reason="runs keras.applications.ResNet50V2")
    pytest.importorskip("torch", reason="runs the exact module")
    from converter.convert import convert
    from converter.nets import torch as nets
    from converter.runtimes import keras as runtime

    fixture, table = zoo("resnet_v2_50"), mapping.load_table("resnet_v2_50")
    size = (fixture.meta["image_size"],) * 2
    result = convert(fixture.v2, to="keras", output=tmp_path / "model.h5", input_size=size)
    keras_outputs, _ = runtime.run(result.output, result.plan, fixture.input)
    # TF-Slim's network with Keras's stem pool: zero padding 1 on every side, then a VALID 3x3 max pool
    raw = table_schema.read(table.path)
    pool = raw["graph"].index({"max_pool": [3, 3], "stride": 2})
    raw["graph"][pool:pool + 1] = [{"pad": [[1, 1], [1, 1]]}, {"max_pool": [3, 3], "stride": 2, "padding": "VALID"}]
    (tmp_path / "keras_stem.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    keras_stem = mapping.load_table(tmp_path / "keras_stem.yaml")
    with open_checkpoint(fixture.v2) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
        outputs = {}
        for name, which in (("slim", table), ("keras stem", keras_stem)):
            plan = mapping.plan(shapes, which, "torch", input_size=size)
            outputs[name] = _exact(plan, nets.plan_state_dict(plan, ckpt.read), fixture.input)
    assert _off(keras_outputs, outputs["slim"]) == set(keras_outputs), "keras.applications no longer drifts"
    assert not _off(keras_outputs, outputs["keras stem"])


def test_batch_verifies_a_tree_of_both_families(zoo, tmp_path):
    report = batch_verify_tree(tmp_path, {"v1": zoo("resnet_v1_101").v2, "nested/v2": zoo("resnet_v2_50").v2},
                               timeout=WAIT_S)
    assert {model: record["architecture"] for model, record in report.items()} == {
        "v1/model.ckpt": "resnet_v1_101", "nested/v2/model.ckpt": "resnet_v2_50"}
    v1, v2 = report["v1/model.ckpt"], report["nested/v2/model.ckpt"]
    assert v1["decisions"]["input_size"] == [224, 224] and v2["decisions"]["input_size"] == [299, 299]
    assert v1["decisions"]["background"]["rule"] == "none"
    assert v2["decisions"]["background"]["rule"] == "released count"  # 1001 classes: background dropped
