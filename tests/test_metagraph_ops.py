"""MobileNet-style layers recovered from their .meta: relu6, depthwise and separable convolutions, batch
norm as arithmetic (``fused=False``) in training mode or behind an ``is_training`` placeholder, a batch
norm of its own scope with another epsilon, and scales by constants.

The checkpoints are saved by ``tf.train.Saver`` from tf-slim layers in training mode
(``fixtures/make_meta_fixtures.py``, networks ``mobile`` and ``mobile_training``); the golden outputs
come from the same network function built for inference. Each new op is shown to matter (a port that
gets it wrong fails the comparison), and each one the schema cannot express is refused by node and op.
"""

import copy

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from converter import oracle, table_schema
from converter.cli import cli
from converter.convert import convert
from converter.errors import GraphError, MappingError
from converter.metagraph import recover
from converter.metagraph.recover import recover_data

pytest.importorskip("torch", reason="the ports run in torch")
from converter.runtimes import onnx as onnx_runtime  # noqa: E402
from converter.runtimes import torch as torch_runtime  # noqa: E402

RUNTIMES = {"torch": (torch_runtime, ".pth"), "onnx": (onnx_runtime, ".onnx")}
NETWORKS = ("mobile", "mobile_training")
# the unfused batch norms of the training graph: each one's mean and variance inputs
UNFUSED = ("Conv2d_0", "Conv2d_1_depthwise", "Conv2d_1_pointwise", "Conv2d_2")


def _port(fixture, target, tmp_path, **options):
    runtime, suffix = RUNTIMES[target]
    result = convert(fixture.checkpoint, target, tmp_path / f"port{suffix}", **options)
    outputs, _ = runtime.run(result.output, result.plan, fixture.input)
    return result, outputs


def _ported_with(data, fixture, target, tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(data))
    return _port(fixture, target, tmp_path, mapping=path, force=True)[1]["Logits"]


@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
@pytest.mark.parametrize("target", sorted(RUNTIMES))
@pytest.mark.parametrize("name", NETWORKS)
def test_mobile_layers_port_as_the_network_built_for_inference(meta_net, name, target, ema, tmp_path):
    fixture = meta_net(name)
    result, outputs = _port(fixture, target, tmp_path, ema=ema)
    golden = fixture.golden(ema=ema)["Logits"]
    assert np.abs(golden).max() > 1.0  # the logits carry signal through every layer
    comparison = oracle.compare(golden, outputs["Logits"])
    assert comparison.ok, (comparison.max_abs, comparison.bound)
    assert ("input range", "[-1, 1]: the graph does not state the input range; TF-Slim's [-1, 1] is assumed "
                           "(`ckpt-convert map --input-range LOW,HIGH` sets it)") in result.plan.decisions()


def test_the_recovered_table_holds_the_new_kinds(meta_net):
    data = recover_data(meta_net("mobile").graph)
    kinds = {layer: data["kinds"][row["kind"]] for layer, row in data["layers"].items()}
    assert {layer: kind["compute"] for layer, kind in kinds.items()} == {
        "Conv2d_0": {"op": "conv", "batch_norm": True, "activation": "relu6"},
        "Conv2d_1_depthwise": {"op": "depthwise", "batch_norm": True, "activation": "relu6"},
        "Conv2d_1_pointwise": {"op": "conv", "batch_norm": True, "activation": "relu6"},
        "Conv2d_2": {"op": "separable", "batch_norm": True, "activation": "relu6"},
        "postnorm": {"op": "batch_norm", "epsilon": 1e-5, "activation": "relu6"},  # its own epsilon
        "Logits": {"op": "linear"},
    }
    assert data["facts"]["batch_norm_epsilon"] == 0.001
    assert kinds["Conv2d_2"]["params"]["pointwise_weights"] == [1, 1, "depthwise", "out"]
    assert kinds["postnorm"]["params"]["moving_mean"] == ["channels"]
    assert data["graph"][0] == {"scale": 4.0} and {"scale": 2.0} in data["graph"]
    assert {"layer": "Conv2d_2", "stride": 2} in data["graph"]
    assert "[-1, 1] is assumed" in data["description"] and "is assumed" in data["facts"]["preprocessing"]
    # behind the is_training placeholder the cond's inference branch reads the moving statistics itself
    assert data["facts"]["meta_graph"]["training_flags"] == ["is_training"]
    assert "statistics" not in data["facts"]["meta_graph"]
    training = recover_data(meta_net("mobile_training").graph)["facts"]["meta_graph"]
    assert training["statistics"] == {
        **{f"Net/{layer}/BatchNorm/batchnorm_1/mul_2:0": f"Net/{layer}/BatchNorm/moving_mean" for layer in UNFUSED},
        **{f"Net/{layer}/BatchNorm/batchnorm_1/add:0": f"Net/{layer}/BatchNorm/moving_variance" for layer in UNFUSED},
    }
    assert training["batch_norms"] == {"Net/postnorm/FusedBatchNormV3": ["Net/postnorm/moving_mean",
                                                                        "Net/postnorm/moving_variance"]}


def _edited(data, edit):
    wrong = copy.deepcopy(data)
    edit(wrong)
    return wrong


def _kind(data, layer):
    return data["kinds"][data["layers"][layer]["kind"]]


@pytest.mark.parametrize("wrong", [
    "relu for relu6",
    "no scale",
    "the table's epsilon for postnorm",
    "depthwise channels in torch's usual order",
])
def test_each_new_op_matters(meta_net, tmp_path, wrong):
    fixture = meta_net("mobile")
    golden = fixture.golden()["Logits"]
    data = recover_data(fixture.graph)
    target = "onnx"
    if wrong == "relu for relu6":
        edited = _edited(data, lambda d: [kind["compute"].update(activation="relu") for kind in d["kinds"].values()
                                          if kind["compute"].get("activation") == "relu6"])
    elif wrong == "no scale":
        edited = _edited(data, lambda d: d["graph"].__setitem__(0, {"avg_pool": [1, 1]}))
    elif wrong == "the table's epsilon for postnorm":
        edited = _edited(data, lambda d: _kind(d, "postnorm")["compute"].pop("epsilon"))
    else:
        # a plain HWIO -> OIHW reading of [kh, kw, in, multiplier] mixes the channels: caught on load
        target = "torch"
        edited = _edited(data, lambda d: _kind(d, "Conv2d_2")["torch"]["depthwise.weight"].update(
            transform="hwio_to_oihw"))
        with pytest.raises(MappingError, match=r"a depthwise convolution of .* needs \[in \* multiplier, 1, kh, kw\]"):
            _ported_with(edited, fixture, target, tmp_path)
        return
    assert oracle.compare(golden, _ported_with(data, fixture, target, tmp_path)).ok
    assert not oracle.compare(golden, _ported_with(edited, fixture, target, tmp_path)).ok


def test_the_training_graph_runs_at_inference_as_the_reference(meta_net):
    # verify's reference: the .meta graph with each unfused batch norm's batch statistics rewired to the
    # moving ones; the same graph run as saved (batch statistics) is another network
    pytest.importorskip("tensorflow", reason="the reference runs the .meta graph in TensorFlow")
    from converter.metagraph import reference as graph_reference

    fixture = meta_net("mobile_training")
    table = recover.recover_table(fixture.graph)
    golden = fixture.golden(ema=True)["Logits"]
    outputs = graph_reference.run(fixture.checkpoint, table, fixture.input, ema=True)
    assert oracle.compare(golden, outputs["Logits"]).ok
    assert "5 training-mode batch norms run with their moving statistics" in graph_reference.describe(table)
    assert not oracle.compare(fixture.golden()["Logits"], fixture.run_as_saved()).ok


def test_verify_checks_a_recovered_mobile_network(meta_net):
    pytest.importorskip("tensorflow", reason="the reference runs the .meta graph in TensorFlow")
    from converter.verify import verify

    report = verify(meta_net("mobile_training").checkpoint, batch=1)
    assert report.ok, report.table()
    assert {backend.target for backend in report.backends} == {"torch", "onnx"}


def test_map_takes_the_input_range(meta_net, tmp_path):
    fixture = meta_net("mobile")
    table = tmp_path / "net.yaml"
    result = CliRunner().invoke(cli, ["map", str(fixture.checkpoint), "-o", str(table), "--input-range", "0,255"])
    assert result.exit_code == 0, result.output
    data = table_schema.read(table)
    assert data["facts"]["input"]["range"] == [0.0, 255.0] and "is assumed" not in data["description"]
    assert "input range: [0, 255]: the input range was given" in result.output
    bad = CliRunner().invoke(cli, ["map", str(fixture.checkpoint), "--input-range", "255,0"])
    assert bad.exit_code != 0 and "LOW must be below HIGH" in bad.output


def test_what_the_schema_cannot_express_is_refused_by_node_and_op(meta_net):
    fixture = meta_net("unsupported")
    with pytest.raises(GraphError) as caught:
        recover_data(fixture.graph)
    message = str(caught.value)
    assert message.startswith(f"{fixture.graph}: cannot recover the network (5 problems)")
    dilated = "a dilated (atrous, rate > 1) convolution as TensorFlow runs it; dilations are not supported"
    for node in ("SpaceToBatchND Net/conv1/Conv2D/SpaceToBatchND", "BatchToSpaceND Net/dw2/depthwise/BatchToSpaceND"):
        assert f"{node}: {dilated}" in message
    assert "Elu Net/elu: this op type is not supported" in message


def _save(tf, path, build):
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 4], name="images")
        with tf.compat.v1.variable_scope("Net"):
            logits = build(images)
            tf.nn.softmax(logits, name="Predictions")
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(session, str(path / "model.ckpt"))
    return path / "model.ckpt.meta"


def _head(tf, slim, net):
    return slim.fully_connected(tf.reduce_mean(net, [1, 2]), 3, activation_fn=None, scope="logits")


@pytest.mark.parametrize("case, expected", [
    ("nchw", "DepthwiseConv2dNative Net/dw/depthwise: data_format NCHW (only NHWC is supported)"),
    ("strides", "DepthwiseConv2dNative Net/dw/depthwise: strides 1x2 differ per axis (the schema takes one stride)"),
    ("dilations", "DepthwiseConv2dNative Net/dw/depthwise: dilations [1, 2, 2, 1] (only 1 is supported)"),
    ("channel scale", "Mul Net/scaled: multiplies by a constant of shape [4] (only a scalar factor is supported)"),
    ("product", "Mul Net/product: a product of two computed tensors (only a multiplication by a constant is "
                "supported)"),
])
def test_each_unsupported_attribute_is_one_line_naming_node_and_op(tmp_path, case, expected):
    pytest.importorskip("tensorflow", reason="the graphs are written by TensorFlow")
    from converter import reference

    tf, slim = reference.import_tensorflow()

    def build(images):
        # an NCHW map of [N, 8, 8, 4] has 8 channels
        kernel = tf.compat.v1.get_variable("dw/depthwise_weights", [3, 3, 8 if case == "nchw" else 4, 1])
        if case in ("nchw", "strides", "dilations"):
            options = {"nchw": {"data_format": "NCHW", "strides": [1, 1, 1, 1]},
                       "strides": {"strides": [1, 1, 2, 1]},
                       "dilations": {"strides": [1, 1, 1, 1], "dilations": [1, 2, 2, 1]}}[case]
            net = tf.raw_ops.DepthwiseConv2dNative(input=images, filter=kernel, padding="SAME", name="dw/depthwise",
                                                   **options)
        elif case == "channel scale":
            net = tf.multiply(images, tf.constant([1.0, 2.0, 3.0, 4.0]), name="scaled")
        else:
            net = tf.multiply(images, tf.nn.relu(images), name="product")
        return _head(tf, slim, net)

    with pytest.raises(GraphError) as caught:
        recover_data(_save(tf, tmp_path, build))
    assert str(caught.value) == f"{tmp_path / 'model.ckpt.meta'}: cannot recover the network: {expected}"


def test_the_schema_additions_are_validated(meta_net):
    from converter import mapping

    data = recover_data(meta_net("mobile").graph)
    assert mapping.validate(data) == []
    cases = {
        "scale 'x' must be a finite number": lambda d: d["graph"].__setitem__(0, {"scale": "x"}),
        "scale nan must be a finite number": lambda d: d["graph"].__setitem__(0, {"scale": float("nan")}),
        "compute.epsilon must be a positive number, on a kind with a batch norm":
            lambda d: _kind(d, "Logits")["compute"].update(epsilon=0.001),
        "compute.activation must be one of relu, relu6": lambda d: _kind(d, "Conv2d_0")["compute"].update(
            activation="relu7"),
        "facts.batch_norm_epsilon must be a positive number": lambda d: d["facts"].pop(
            "batch_norm_epsilon"),
    }
    for expected, edit in cases.items():
        problems = mapping.validate(_edited(data, edit))
        assert any(expected in problem for problem in problems), (expected, problems)
    # a kind with its own epsilon needs none from the table
    own = _edited(data, lambda d: d["facts"].pop("batch_norm_epsilon"))
    for kind in own["kinds"].values():
        if kind["compute"].get("batch_norm") or kind["compute"]["op"] == "batch_norm":
            kind["compute"].setdefault("epsilon", 0.001)
    assert mapping.validate(own) == []
