"""Mapping table schema 2 and the table hash ports record; no backend (torch, TensorFlow, Keras) is imported."""

import copy
import subprocess
import sys

import pytest
import yaml

import crafted
from converter import mapping, table_schema
from converter.errors import MappingError

# blake2b of each built-in table's expanded form, as the schema 1 tables gave it before they were rewritten
# in schema 2: a table whose meaning changes fails here (and its ports record another table_blake2b)
GOLDEN = {
    "alexnet_v2": "965a1c65c46b3e5cd361673213df9b83",
    "inception_v1": "7d65ef6a1afc51a9f16e355038cfe46a",
    "inception_v2": "263211a99955a40142925215e82445bd",
    "inception_v3": "c9ae819942dce407999c4b7ae7247cd3",
    "mobilenet_v1": "6bb89063f368193202653c0d583a3928",
    "mobilenet_v2": "165e66a2928c4e2d89aa476c44fda6e4",
    "resnet_v1_101": "8d40a093d20e205f6d2e12654417716b",
    "resnet_v1_152": "9b098dd7320980b5415c8fd243b81fb9",
    "resnet_v1_200": "5e3d4ca9979eef4a621a9557f66e5811",
    "resnet_v1_50": "f057bbf1b1a08b4556e31ffc6d42b352",
    "resnet_v2_101": "b0f90d5da03cd80da39d3548f292eaf4",
    "resnet_v2_152": "e34492eae2af275e068a97af6aaa56d0",
    "resnet_v2_200": "2ff0b76136994dd69aa5a86f7046a791",
    "resnet_v2_50": "2c55f6de270ea7a6e6f6cb87fe92962e",
    "vgg_16": "342098b3be25212888ffe6b590f4f4aa",
    "vgg_19": "8fe57da334acd020dd902158d1e685c1",
}

# a schema 2 table: the library's kinds, a layer's activation on its node, derived names and Keras order
TINY_V2 = """
schema: 2
architecture: tiny
scope: Tiny
detect: [Conv2d_1a_3x3/weights]
facts:
  num_classes: 5
  background_class: 0
  input: {height: 8, width: 8, channels: 3, range: [-1.0, 1.0]}
  batch_norm_epsilon: 0.001
  end_points: [Conv, Mixed, Logits]
targets:
  torch: {}
  onnx: {}
  keras: {application: Tiny}
graph:
  - {name: Conv, layer: Conv2d_1a_3x3, stride: 2, activation: relu}
  - name: Mixed
    concat:
      - [{layer: Branch_0/Conv2d_0a_1x1, activation: relu}]
      - [{layer: Branch_1/Conv2d_0a_1x1, activation: relu}, {layer: Branch_1/Conv2d_0b_3x3, activation: relu6}]
  - {avg_pool: global}
  - name: Logits
    nodes:
      - {flatten: true}
      - {layer: Conv2d_1c_1x1}
layers:
  Conv2d_1a_3x3: {kind: conv_bn_nogamma, torch: conv}
  Mixed/Branch_0/Conv2d_0a_1x1: {kind: conv_bn_nogamma}
  Mixed/Branch_1/Conv2d_0a_1x1: {kind: conv_bn_nogamma, keras: {conv2d: mixed_1_conv}}
  Mixed/Branch_1/Conv2d_0b_3x3: {kind: conv_bn_nogamma}
  Logits/Conv2d_1c_1x1: {kind: logits, keras: {dense: predictions}}
"""


def _write(tmp_path, text, name="table.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _tiny(tmp_path, edit=None, name="table.yaml"):
    data = yaml.safe_load(TINY_V2)
    if edit:
        edit(data)
    return _write(tmp_path, yaml.safe_dump(data, sort_keys=False), name)


@pytest.fixture()
def expanded():
    return table_schema.read(mapping.load_table("inception_v3").path)


def test_a_table_that_means_the_same_hashes_the_same(tmp_path, expanded):
    builtin = mapping.load_table("inception_v3").digest
    # another file: keys reordered, a kind renamed, comments and description gone
    same = copy.deepcopy(expanded)
    same["kinds"] = {name.upper(): kind for name, kind in reversed(same["kinds"].items())}
    for row in same["layers"].values():
        row["kind"] = row["kind"].upper()
    same["description"] = "another sentence"
    same = dict(reversed(same.items()))
    assert mapping.load_table(_write(tmp_path, yaml.safe_dump(same))).digest == builtin
    changed = copy.deepcopy(expanded)
    changed["layers"]["Conv2d_1a_3x3"]["torch"] = "stem"
    assert mapping.load_table(_write(tmp_path, yaml.safe_dump(changed), "a.yaml")).digest != builtin
    changed = copy.deepcopy(expanded)
    changed["kinds"][changed["layers"]["Conv2d_1a_3x3"]["kind"]]["compute"]["activation"] = "relu6"
    assert mapping.load_table(_write(tmp_path, yaml.safe_dump(changed), "b.yaml")).digest != builtin


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_builtin_table_is_schema_2_and_means_what_its_schema_1_form_did(name):
    assert set(GOLDEN) == set(mapping.builtin_tables()), "a new built-in table needs its golden digest here"
    table = mapping.load_table(name)
    assert yaml.safe_load(table.path.read_text())["schema"] == table_schema.SCHEMA
    assert table.digest == GOLDEN[name]


def test_names_default_to_the_scope_and_the_keras_counter(tmp_path):
    table = table_schema.read(_tiny(tmp_path))
    rows = table["layers"]
    assert rows["Conv2d_1a_3x3"]["torch"] == "conv" and rows["Conv2d_1a_3x3"]["onnx"] == "Conv2d_1a_3x3"
    assert rows["Mixed/Branch_0/Conv2d_0a_1x1"]["torch"] == "Mixed.Branch_0.Conv2d_0a_1x1"
    # Keras counts the layers it names itself: a layer the model names (mixed_1_conv) takes no number
    assert [row["keras"] for row in rows.values()] == [
        {"conv2d": "conv2d", "batch_normalization": "batch_normalization"},
        {"conv2d": "conv2d_1", "batch_normalization": "batch_normalization_1"},
        {"conv2d": "mixed_1_conv", "batch_normalization": "batch_normalization_2"},
        {"conv2d": "conv2d_2", "batch_normalization": "batch_normalization_3"},
        {"dense": "predictions"}]


def test_kinds_come_from_the_library_unless_the_table_has_its_own(tmp_path):
    table = table_schema.read(_tiny(tmp_path))
    shared = table_schema.library()["conv_bn_nogamma"]
    # the activation on the graph node makes one kind per activation; `keras` only where the table has it
    assert table["kinds"]["conv_bn_nogamma_relu"]["compute"] == {**shared["compute"], "activation": "relu"}
    assert table["kinds"]["conv_bn_nogamma_relu6"]["params"] == shared["params"]
    assert table["kinds"]["logits"] == table_schema.library()["logits"]
    own = copy.deepcopy(table_schema.library()["logits"])
    own["torch"]["weight"]["transform"] = "identity"

    def shadow(data):
        data["kinds"] = {"logits": own}
        del data["targets"]["keras"]
    table = table_schema.read(_tiny(tmp_path, shadow, "own.yaml"))
    assert table["kinds"]["logits"]["torch"]["weight"]["transform"] == "identity" and "keras" not in table["kinds"]["logits"]


def test_keras_order_follows_depth_then_the_walk_from_the_output(tmp_path):
    table = table_schema.read(_tiny(tmp_path))
    # the longer branch's first layer is deeper than the shorter branch's; layers of one depth in branch order
    assert table["targets"]["keras"]["order"] == [
        "conv2d", "batch_normalization", "mixed_1_conv", "batch_normalization_2", "conv2d_1", "conv2d_2",
        "batch_normalization_1", "batch_normalization_3", "predictions"]
    given = table_schema.read(_tiny(tmp_path, lambda data: data["targets"]["keras"].update(order=["x"]), "o.yaml"))
    assert given["targets"]["keras"]["order"] == ["x"]  # an order written out is taken as it is


def test_a_schema_1_table_is_read_as_it_is_with_a_note_and_migrates(tmp_path, capsys):
    # the expanded form written out is a schema 1 table, as an older ckpt-convert wrote them
    expanded = table_schema.read(_write(tmp_path, crafted.TINY_TABLE, "tiny_v2.yaml"))
    assert expanded["schema"] == 1 and expanded["targets"]["keras"]["order"]
    path = _write(tmp_path, yaml.safe_dump(expanded, sort_keys=False), "tiny.yaml")
    before = mapping.load_table(path)
    note = capsys.readouterr().err.strip()
    assert note == (f"note: {path} is a schema 1 mapping table, read as it is; "
                    f"`python -m converter.mappings.generate --migrate {path}` writes it in schema 2")
    output = tmp_path / "migrated.yaml"
    run = [sys.executable, "-m", "converter.mappings.generate", "--migrate", str(path), "-o", str(output)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    migrated = yaml.safe_load(output.read_text())
    assert migrated["schema"] == 2 and "order" not in migrated["targets"]["keras"]
    assert "onnx" not in migrated["layers"]["Conv2d_1a_3x3"]
    assert mapping.load_table(output).digest == before.digest
    again = subprocess.run(run, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.strip().endswith("already exists; pass --force to overwrite it")
    refused = subprocess.run(run[:4] + [str(output)], capture_output=True, text=True)
    assert refused.returncode == 1 and "not a schema 1 mapping table" in refused.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda data: data["layers"]["Conv2d_1a_3x3"].update(kind="conv_bm"),
     "layers.Conv2d_1a_3x3.kind: unknown kind 'conv_bm' (neither the table's kinds nor mappings/kinds.yaml has it)"),
    (lambda data: data["layers"]["Conv2d_1a_3x3"].update(onxx="stem"),
     "layers.Conv2d_1a_3x3: unknown key 'onxx' (a row has kind, torch, keras, onnx)"),
    (lambda data: data.update(kind={}), "unknown key 'kind' at the top level"),
    (lambda data: data["graph"][0].update(activaton="relu"), "graph[0] (Conv): unknown key 'activaton' in a graph node"),
    (lambda data: data["graph"][1]["concat"][1][1].update(activation="gelu"),
     "graph[1] (Mixed).concat[1][1]: activation 'gelu' of layer Branch_1/Conv2d_0b_3x3 is not one of relu, relu6"),
    (lambda data: data.update(kinds={"mine": {"compute": {"op": "conv", "activation": "relu"}}}),
     "kinds.mine.compute.activation: schema 2 puts a layer's activation on its graph node"),
    (lambda data: data.update(schema=3), "schema 3 is not supported (this version reads schema 2, and schema 1 as it is)"),
])
def test_a_bad_schema_2_table_is_one_line_naming_the_file_and_the_key(tmp_path, edit, message):
    path = _tiny(tmp_path, edit)
    with pytest.raises(MappingError) as error:
        mapping.load_table(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_several_problems_are_reported_at_once(tmp_path):
    def edit(data):
        data["layers"]["Conv2d_1a_3x3"]["kind"] = "nothing"
        data["layers"]["Logits/Conv2d_1c_1x1"]["tourch"] = "fc"
    with pytest.raises(MappingError, match=r"\(2 problems\)") as error:
        mapping.load_table(_tiny(tmp_path, edit))
    assert "unknown kind 'nothing'" in str(error.value) and "unknown key 'tourch'" in str(error.value)


# a residual stack: the unit is a template, used once per value of `unit`, its rows given on its nodes
STACK_V2 = TINY_V2.replace("""  - name: Mixed
    concat:
      - [{layer: Branch_0/Conv2d_0a_1x1, activation: relu}]
      - [{layer: Branch_1/Conv2d_0a_1x1, activation: relu}, {layer: Branch_1/Conv2d_0b_3x3, activation: relu6}]
""", """  - name: Mixed
    nodes:
      - {use: unit, for: {unit: [1, 3]}, with: {stage: 2}}
""").replace("""  Mixed/Branch_0/Conv2d_0a_1x1: {kind: conv_bn_nogamma}
  Mixed/Branch_1/Conv2d_0a_1x1: {kind: conv_bn_nogamma, keras: {conv2d: mixed_1_conv}}
  Mixed/Branch_1/Conv2d_0b_3x3: {kind: conv_bn_nogamma}
""", "").replace("graph:\n", """templates:
  unit:
    - activation: relu
      add:
        - []
        - - {layer: "unit_{unit}/conv", activation: relu, kind: conv_bn_nogamma, torch: "stage{stage}.{unit-1}.conv",
             keras: {conv2d: "conv{stage}_block{unit}"}}
          - {layer: "unit_{unit}/conv_{kh}x{kw}", kind: conv_bn_nogamma}
graph:
""")


def test_a_template_repeats_nodes_and_their_rows(tmp_path):
    table = table_schema.read(_write(tmp_path, STACK_V2))
    units = table["graph"][1]["nodes"]
    assert [node["add"][1][0]["layer"] for node in units] == ["unit_1/conv", "unit_2/conv", "unit_3/conv"]
    assert all(node == {"activation": "relu", "add": [[], [{"layer": f"unit_{n}/conv"},
                                                           {"layer": f"unit_{n}/conv_{{kh}}x{{kw}}"}]]}
               for n, node in enumerate(units, start=1))
    # rows in graph order: the templates' after the table's own; `{kh}` is a size field, not a variable
    assert list(table["layers"]) == ["Conv2d_1a_3x3", "Logits/Conv2d_1c_1x1"] + [
        f"Mixed/unit_{n}/{layer}" for n in (1, 2, 3) for layer in ("conv", "conv_{kh}x{kw}")]
    assert table["layers"]["Mixed/unit_3/conv"]["torch"] == "stage2.2.conv"
    assert table["layers"]["Mixed/unit_3/conv"]["keras"]["conv2d"] == "conv2_block3"
    assert table["layers"]["Mixed/unit_3/conv_{kh}x{kw}"]["torch"] == "Mixed.unit_3.conv_{kh}x{kw}"
    assert table["kinds"][table["layers"]["Mixed/unit_1/conv"]["kind"]]["compute"]["activation"] == "relu"
    assert "activation" not in table["kinds"][table["layers"]["Mixed/unit_1/conv_{kh}x{kw}"]["kind"]]["compute"]


def test_a_resnet_152_table_is_as_short_as_a_resnet_50_one():
    lines = {name: len(mapping.load_table(name).path.read_text().splitlines())
             for name in ("resnet_v1_50", "resnet_v1_152", "resnet_v2_50", "resnet_v2_152")}
    assert lines["resnet_v1_152"] == lines["resnet_v1_50"] and lines["resnet_v2_152"] == lines["resnet_v2_50"]
    assert len(mapping.load_table("resnet_v1_152").layers) == 156 > len(mapping.load_table("resnet_v1_50").layers)


@pytest.mark.parametrize("old, new, message", [
    ("{use: unit, for", "{use: units, for", "graph[1] (Mixed).nodes[0].use: unknown template 'units' (the table's templates: unit)"),
    ("[1, 3]", "[3, 1]", "graph[1] (Mixed).nodes[0].for: must give one variable and its range [first, last]"),
    ("[1, 3]", "[1, 5000]", "graph[1] (Mixed).nodes[0].for: must give one variable and its range [first, last]"),
    ("for: {unit: [1, 3]}", "for: {unit: [1, 3], stage: [1, 2]}", "nodes[0].for: must give one variable"),
    ("with: {stage: 2}}", "with: {stage: [2]}}", "graph[1] (Mixed).nodes[0].with: must map variable names to integers"),
    ("with: {stage: 2}}", "with: {stage: 2}, times: 3}", "graph[1] (Mixed).nodes[0]: unknown key 'times' in a `use` node"),
    ("        - []\n", "        - [{use: unit}]\n", "templates used more than 8 deep (does template unit use itself?)"),
    ("kind: conv_bn_nogamma, torch: \"stage", "kind: conv_bm, torch: \"stage",
     "layers.Mixed/unit_1/conv.kind: unknown kind 'conv_bm'"),
])
def test_a_bad_repetition_is_an_error_naming_the_file_and_the_node(tmp_path, old, new, message):
    assert old in STACK_V2
    path = _write(tmp_path, STACK_V2.replace(old, new, 1))
    with pytest.raises(MappingError) as error:
        mapping.load_table(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_row_given_twice_is_an_error(tmp_path):
    text = STACK_V2.replace("layers:\n", "layers:\n  Mixed/unit_2/conv: {kind: conv_bn_nogamma}\n")
    with pytest.raises(MappingError, match="layers.Mixed/unit_2/conv: given both in `layers` and on its graph node"):
        mapping.load_table(_write(tmp_path, text))


def test_a_graph_that_does_not_resolve_is_reported_not_a_crash(tmp_path):
    # the Keras order cannot be derived from it: validation names the node instead
    path = _tiny(tmp_path, lambda data: data["graph"][2].update(input="Nowhere"))
    with pytest.raises(MappingError, match="graph: input 'Nowhere' is not an earlier named node"):
        mapping.load_table(path)
