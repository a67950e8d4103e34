"""Networks recovered from training graphs: no table, and the ports equal the network built for inference.

Each checkpoint here was saved by ``tf.train.Saver`` from a tf-slim network in training mode
(``fixtures/make_meta_fixtures.py``); the golden outputs come from the same network function built
for inference. Conversion takes no flags: the ``.meta`` beside the checkpoint is found and read
without TensorFlow. Wrong recoveries (training-mode batch norm kept, moving statistics swapped,
a flatten in the wrong order) are shown to fail the same comparison.
"""

import copy

import pytest
import yaml

from converter import mapping, oracle
from converter.convert import convert, table_for
from converter.errors import GraphError, MappingError
from converter.metagraph import read_meta_graph
from converter.metagraph.recover import recover_data, recover_table

pytest.importorskip("torch", reason="the ports run in torch")
from converter.runtimes import onnx as onnx_runtime  # noqa: E402
from converter.runtimes import torch as torch_runtime  # noqa: E402

RUNTIMES = {"torch": (torch_runtime, ".pth"), "onnx": (onnx_runtime, ".onnx")}
NETWORKS = ("residual", "flatten_fc")


def _port(fixture, target, tmp_path, **options):
    runtime, suffix = RUNTIMES[target]
    result = convert(fixture.checkpoint, target, tmp_path / f"port{suffix}", **options)
    outputs, _ = runtime.run(result.output, result.plan, fixture.input)
    return result, outputs


def _max_delta(golden, outputs):
    return {name: oracle.compare(value, outputs[name]) for name, value in golden.items()}


@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
@pytest.mark.parametrize("target", sorted(RUNTIMES))
@pytest.mark.parametrize("name", NETWORKS)
def test_training_graphs_port_as_the_network_built_for_inference(meta_net, name, target, ema, tmp_path):
    fixture = meta_net(name)
    result, outputs = _port(fixture, target, tmp_path, ema=ema)
    assert result.architecture == "recovered from model.ckpt.meta"
    assert ("network", "Net (recovered from model.ckpt.meta)") in result.plan.decisions()
    for end_point, comparison in _max_delta(fixture.golden(ema=ema), outputs).items():
        assert comparison.ok, (end_point, comparison.max_abs, comparison.bound)
    # what training left in the checkpoint is skipped by its role, not by --lenient
    assert {"optimizer slots", "training state"} <= set(result.skipped)


def test_the_recovered_table_says_what_it_rewrote(meta_net):
    residual = recover_data(meta_net("residual").graph)
    facts = residual["facts"]
    assert facts["input"] == {"height": 33, "width": 33, "channels": 3, "range": [-1.0, 1.0]}
    assert (facts["num_classes"], facts["background_class"], facts["end_points"]) == (5, None, ["Logits"])
    graph_facts = facts["meta_graph"]
    assert graph_facts["input"] == "images" and graph_facts["outputs"] == {"Logits": "Net/SpatialSqueeze"}
    # training-mode batch norm, rewritten to the layer's moving statistics; dropout, the identity
    assert graph_facts["batch_norms"]["Net/Conv2d_1a_3x3/BatchNorm/FusedBatchNormV3"] == [
        "Net/Conv2d_1a_3x3/BatchNorm/moving_mean", "Net/Conv2d_1a_3x3/BatchNorm/moving_variance"]
    assert len(graph_facts["batch_norms"]) == 10 and graph_facts["training_flags"] == []
    assert list(graph_facts["dropouts"].values()) == ["Net/global_pool"]
    nodes = residual["graph"]
    assert nodes[0] == {"layer": "Conv2d_1a_3x3", "stride": 2, "padding": "VALID"}
    assert [len(branch) for branch in nodes[2]["concat"]] == [1, 2, 2]
    assert nodes[3]["add"][0] == [] and nodes[3]["activation"] == "relu"
    assert {"pad": [[1, 1], [1, 1]]} in nodes[3]["add"][1]
    assert [len(branch) for branch in nodes[4]["add"]] == [0, 1, 1] and nodes[4]["activation"] == "relu"  # add_n
    assert nodes[-3:] == [{"avg_pool": "global"}, {"flatten": True},
                          {"layer": "Logits", "name": "Logits", "scoped": False}]
    assert residual["layers"]["Mixed_3a/Branch_1/Conv2d_0b_3x3"] == {
        "kind": "conv_bn_nogamma_relu", "torch": "Mixed_3a.Branch_1.Conv2d_0b_3x3", "onnx": "Mixed_3a/Branch_1/Conv2d_0b_3x3"}
    flag = recover_data(meta_net("flatten_fc").graph)
    assert flag["facts"]["meta_graph"]["training_flags"] == ["is_training"]
    assert flag["facts"]["meta_graph"]["batch_norms"] == {}  # the cond's inference branch is taken as it is
    assert len(flag["facts"]["meta_graph"]["dropouts"]) == 1  # TF 1's hand-written one; slim's is in the cond
    assert {"flatten": "hwc"} in flag["graph"] and flag["facts"]["batch_norm_epsilon"] == 1e-5
    assert flag["kinds"][flag["layers"]["conv2"]["kind"]]["torch"]["bn.weight"] == {"from": "BatchNorm/gamma"}
    assert flag["kinds"][flag["layers"]["fc3"]["kind"]]["torch"]["fc.weight"]["transform"] == "dense_to_linear"


def _convert_with(table_data, fixture, target, tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(table_data))
    return _port(fixture, target, tmp_path, mapping=path, force=True)[1]


def test_wrong_recoveries_are_caught_by_the_golden_outputs(meta_net, tmp_path):
    fixture = meta_net("flatten_fc")
    golden = fixture.golden()
    honest = recover_data(fixture.graph)
    assert all(c.ok for c in _max_delta(golden, _convert_with(honest, fixture, "onnx", tmp_path)).values())
    # the moving statistics swapped
    swapped = copy.deepcopy(honest)
    kind = swapped["kinds"][swapped["layers"]["conv2"]["kind"]]
    kind["onnx"]["BatchNorm/moving_mean"], kind["onnx"]["BatchNorm/moving_variance"] = \
        kind["onnx"]["BatchNorm/moving_variance"], kind["onnx"]["BatchNorm/moving_mean"]
    # the flatten in torch's channels-first order where TensorFlow flattened H, W, C
    reordered = copy.deepcopy(honest)
    reordered["graph"][reordered["graph"].index({"flatten": "hwc"})] = {"flatten": "spatial"}
    for wrong in (swapped, reordered):
        assert not all(c.ok for c in _max_delta(golden, _convert_with(wrong, fixture, "onnx", tmp_path)).values())


def test_training_mode_batch_norm_kept_is_caught(meta_net):
    # what a converter that keeps the graph's training-mode batch norm computes (batch statistics, live
    # dropout): TensorFlow running the saved graph as it is
    fixture = meta_net("residual")
    assert not oracle.compare(fixture.golden()["Logits"], fixture.run_as_saved()).ok


def test_an_unsupported_op_names_every_op_and_node_at_once(meta_net):
    with pytest.raises(GraphError) as caught:
        recover_table(meta_net("unsupported").graph)
    message = str(caught.value)
    assert message.startswith(f"{meta_net('unsupported').graph}: cannot recover the network (5 problems)")
    assert "SpaceToBatchND Net/conv1/Conv2D/SpaceToBatchND: a dilated (atrous, rate > 1) convolution" in message
    assert "BatchToSpaceND Net/dw2/depthwise/BatchToSpaceND: a dilated (atrous, rate > 1) convolution" in message
    assert "Elu Net/elu: this op type is not supported" in message
    assert "--input" in message  # an unknown op may be preprocessing before the network
    with pytest.raises(GraphError, match="cannot recover"):
        convert(meta_net("unsupported").checkpoint, "torch", dry_run=True)


def test_input_and_outputs_can_be_chosen(meta_net):
    fixture = meta_net("residual")
    data = recover_data(fixture.graph, outputs="Net/SpatialSqueeze,Net/Mixed_3a/concat")
    assert data["facts"]["end_points"] == ["SpatialSqueeze", "Mixed_3a/concat"]
    named = [node.get("name") for node in data["graph"] if node.get("name")]
    assert named == ["Mixed_3a/concat", "SpatialSqueeze"]
    # the default output first, the logits after it: the logits take it, and it is referenced last
    reversed_order = recover_data(fixture.graph, outputs="Net/Mixed_3a/concat,Net/SpatialSqueeze")
    assert reversed_order["graph"][-1] == {"input": "Mixed_3a/concat", "nodes": []}
    assert mapping.validate(reversed_order) == []
    # cut before the first layer: the network starts at its first convolution's input
    with pytest.raises(GraphError, match="the network also depends on"):
        recover_data(fixture.graph, input_node="Net/Mixed_3a/Branch_0/Conv2d_0a_1x1/Conv2D")
    with pytest.raises(GraphError, match="no node named nowhere"):
        recover_data(fixture.graph, outputs="nowhere")


def test_the_table_is_found_only_where_no_built_in_one_fits(meta_net, tmp_path):
    fixture = meta_net("residual")
    names = list(read_meta_graph(fixture.graph).variables)
    assert table_for(names, checkpoint=fixture.checkpoint).path == fixture.graph
    assert table_for(names, mapping=fixture.graph).architecture == "recovered from model.ckpt.meta"
    with pytest.raises(MappingError, match="no .meta graph lies beside it"):
        table_for(names, checkpoint=tmp_path / "model.ckpt")
    assert mapping.validate(recover_data(fixture.graph)) == []


def test_a_head_that_no_softmax_takes_is_an_output_too(tmp_path):
    # a graph built for inference has no loss: a second head (an auxiliary classifier) is found by its kernels
    from converter import reference

    tf, slim = reference.import_tensorflow()
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        with tf.compat.v1.variable_scope("Net"):
            net = slim.conv2d(images, 4, [3, 3], scope="conv1")
            aux = slim.conv2d(net, 2, [8, 8], padding="VALID", activation_fn=None, scope="Aux/logits")
            tf.squeeze(aux, [1, 2], name="Aux/SpatialSqueeze")
            logits = slim.fully_connected(tf.reduce_mean(net, [1, 2]), 3, activation_fn=None, scope="logits")
            tf.nn.softmax(logits, name="Predictions")
        # another network in the same graph, on an input of its own: not a head of this one
        slim.conv2d(tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 1], name="other"), 2, [1, 1], scope="Other")
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(session, str(tmp_path / "model.ckpt"))
    data = recover_data(tmp_path / "model.ckpt.meta")
    assert data["facts"]["meta_graph"]["outputs"] == {"Logits": "Net/logits/BiasAdd",
                                                      "Aux/SpatialSqueeze": "Net/Aux/SpatialSqueeze"}
    result = convert(tmp_path / "model.ckpt", "onnx", tmp_path / "net.onnx", outputs=["Aux/SpatialSqueeze"],
                     strict=False)
    # every variable of the network has its row; the other network's are outside it
    assert set(result.skipped) == {"outside the network"} and len(result.skipped["outside the network"]) == 2


def test_a_batch_norm_of_its_own_scope_is_a_layer_of_its_own(tmp_path):
    from converter import reference

    tf, slim = reference.import_tensorflow()
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        with tf.compat.v1.variable_scope("Net"):
            net = slim.conv2d(images, 4, [3, 3], activation_fn=None, scope="conv1")
            net = tf.nn.relu(slim.batch_norm(net, is_training=True, scope="bn1"))
            tf.nn.softmax(slim.fully_connected(tf.reduce_mean(net, [1, 2]), 3, scope="logits"), name="Predictions")
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(session, str(tmp_path / "model.ckpt"))
    data = recover_data(tmp_path / "model.ckpt.meta")
    assert data["graph"][:2] == [{"layer": "conv1"}, {"layer": "bn1"}]
    assert data["kinds"][data["layers"]["conv1"]["kind"]]["compute"] == {"op": "conv"}
    norm = data["kinds"][data["layers"]["bn1"]["kind"]]
    assert norm["compute"] == {"op": "batch_norm", "activation": "relu"}
    assert norm["torch"]["bn.running_mean"] == {"from": "moving_mean"} and "gamma" not in norm["params"]
    assert data["facts"]["meta_graph"]["batch_norms"] == {
        "Net/bn1/FusedBatchNormV3": ["Net/bn1/moving_mean", "Net/bn1/moving_variance"]}
