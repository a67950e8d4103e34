"""A zoo network from its training .meta: the recovered table ports as the built-in table does.

TF-Slim's own InceptionV3 (depth multiplier 0.1) trained-style (batch norm in training mode, dropout,
Momentum, EMA, an auxiliary loss) and saved with its .meta: the table recovered from the graph gives
the built-in table's layers, and its torch and ONNX ports compute the built-in ports' end points
(which drop the background class the recovered table keeps) and TF-Slim's golden outputs.
"""

import numpy as np
import pytest

from converter import graph, mapping, oracle
from converter.convert import convert
from converter.metagraph import recover

pytest.importorskip("torch", reason="the ports run in torch")
from converter.runtimes import onnx as onnx_runtime  # noqa: E402
from converter.runtimes import torch as torch_runtime  # noqa: E402

RUNTIMES = {"torch": (torch_runtime, ".pth"), "onnx": (onnx_runtime, ".onnx")}
# end point of the built-in table -> of the recovered one (the logits each head's Softmax or loss takes)
END_POINTS = {"Logits": "Logits", "AuxLogits": "AuxLogits/SpatialSqueeze"}


def test_the_recovered_table_has_the_built_in_layers(meta_net):
    recovered = recover.recover_data(meta_net("inception_v3").graph)
    built_in = mapping.load_table("inception_v3")
    expected = {layer.replace("{kh}x{kw}", "5x5") for layer in built_in.layers}
    assert set(recovered["layers"]) == expected
    assert recovered["scope"] == built_in.scope and recovered["facts"]["end_points"] == list(END_POINTS.values())
    assert len(recovered["facts"]["meta_graph"]["batch_norms"]) == 96  # 94 in the trunk, 2 in the auxiliary head
    # the same graph: the built-in table's strides and paddings, layer by layer
    assert _windows(graph.parse(recovered["graph"])) == _windows(built_in.graph)


def _windows(nodes):
    # {layer scope: (stride, padding)}, the built-in table's sized name bound as the checkpoint binds it
    return {(scope + node.layer).replace("{kh}x{kw}", "5x5"): (node.stride, node.padding)
            for node, scope in graph.walk(nodes) if isinstance(node, graph.Layer)}


@pytest.mark.parametrize("target", sorted(RUNTIMES))
def test_its_ports_compute_the_built_in_ports_end_points(meta_net, target, tmp_path):
    fixture = meta_net("inception_v3")
    runtime, suffix = RUNTIMES[target]
    extra = {"outputs": ["AuxLogits"]} if target == "onnx" else {}
    built_in = convert(fixture.checkpoint, target, tmp_path / f"built_in{suffix}", **extra)
    assert built_in.architecture == "inception_v3"
    extra = {"outputs": list(END_POINTS.values())} if target == "onnx" else {}
    recovered = convert(fixture.checkpoint, target, tmp_path / f"recovered{suffix}", mapping=fixture.graph, **extra)
    ours, _ = runtime.run(recovered.output, recovered.plan, fixture.input)
    theirs, _ = runtime.run(built_in.output, built_in.plan, fixture.input)
    golden = fixture.golden()
    for name, recovered_name in END_POINTS.items():
        every_class = ours[recovered_name]
        assert every_class.shape == golden[name].shape == (2, 1001)
        assert oracle.compare(golden[name], every_class).ok, name
        # the built-in table drops the background class of the released 1001
        np.testing.assert_allclose(every_class[:, 1:], theirs[name], atol=oracle.bound(theirs[name]))
