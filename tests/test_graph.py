"""The typed graph: every built-in table parses into node classes, and one rule says which groups a plan keeps."""

import pytest
import yaml

from converter import graph, input_size, mapping, provenance, table_schema
from converter.checkpoint import open_checkpoint

# YAML key -> the class its node parses into
CLASSES = {"layer": graph.Layer, "max_pool": graph.MaxPool, "avg_pool": graph.AvgPool, "concat": graph.Concat,
           "add": graph.Add, "nodes": graph.Sequence, "pad": graph.Pad, "scale": graph.Scale, "flatten": graph.Flatten}


def _raw_nodes(nodes):
    for node in nodes:
        yield node
        for branch in node.get("concat") or node.get("add") or []:
            yield from _raw_nodes(branch)
        yield from _raw_nodes(node.get("nodes", []))


@pytest.mark.parametrize("name", mapping.builtin_tables())
def test_every_node_parses_into_its_class_and_the_walk_finds_every_row(name):
    table = mapping.load_table(name)
    raw = list(_raw_nodes(table_schema.read(table.path)["graph"]))  # schema 2 expanded
    typed = [node for node, _ in graph.walk(table.graph)]
    assert [type(node) for node in typed] == [CLASSES[next(k for k in CLASSES if k in node)] for node in raw]
    assert [node.name for node in typed] == [node.get("name") for node in raw]
    layers = [scope + node.layer for node, scope in graph.walk(table.graph) if isinstance(node, graph.Layer)]
    assert sorted(layers) == sorted(table.layers)


def test_a_scoped_false_group_holds_its_layers_under_their_own_scopes():
    nodes = graph.parse([
        {"name": "Block", "nodes": [{"layer": "conv"}]},
        {"name": "Logits", "scoped": False, "nodes": [{"flatten": True}, {"layer": "fc8"}]},
        {"name": "Aux", "nodes": [{"layer": "fc"}]},
    ])
    block, logits, aux = nodes
    assert graph.layers(block) == ["Block/conv"] and graph.layers(logits) == ["fc8"]
    assert graph.group_layers(nodes, ("Logits", "Aux")) == {"fc8", "Aux/fc"}
    planned = {"Block/conv", "Aux/fc"}  # a headless plan: the classifier's layer left out
    assert [graph.kept(node, "", planned) for node in nodes] == [True, False, True]
    # the prefix of the group's name is not what decides: a layer named like it does not keep it
    assert not graph.kept(logits, "", {"Block/conv", "Logits/fc8"})
    assert graph.kept(nodes[1].nodes[0], "", set()), "an unnamed node without layers is always kept"


@pytest.fixture(scope="module")
def resnet_shapes(zoo):
    with open_checkpoint(zoo("resnet_v2_50").v2) as ckpt:
        return {name: ckpt.info(name).shape for name in ckpt.names()}


@pytest.mark.parametrize("drop", [(), ("Logits",)], ids=["whole", "headless"])
def test_every_consumer_keeps_the_groups_the_plan_keeps(resnet_shapes, drop):
    # ResNet's Logits is a scoped: false group (its layer is `logits`, not `Logits/...`)
    nets = pytest.importorskip("converter.nets.torch", reason="the exact module needs torch")
    onnx_writer = pytest.importorskip("converter.writers.onnx", reason="the ONNX graph needs onnx")
    onnx = pytest.importorskip("onnx")
    table = mapping.load_table("resnet_v2_50")
    plans = {target: mapping.plan(resnet_shapes, table, target, drop=drop, input_size=(64, 64))
             for target in ("torch", "onnx", "keras")}
    expected = [point for point in table.facts.end_points if plans["torch"].holds(point)]
    assert ("Logits" in expected) == (not drop)
    assert all([point for point in table.facts.end_points if plan.holds(point)] == expected
               for plan in plans.values())
    assert [point for point in nets.SlimNet(plans["torch"]).end_points if point in table.facts.end_points] == expected
    assert provenance.end_points(plans["torch"]) == expected
    model, _ = onnx_writer._declared_model(onnx, plans["onnx"], outputs=expected)
    assert [output.name for output in model.graph.output if output.name in table.facts.end_points] == expected
    input_size.check(table, plans["torch"].dims, (64, 64))
