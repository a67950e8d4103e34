"""`verify` for networks recovered from their .meta: TensorFlow runs that graph at inference as the reference.

The reference is checked against the golden outputs of the network built for inference, so the
graph TensorFlow runs (is_training fed False, or training-mode batch norm and dropout set to
inference) is the network the checkpoint was trained as; a port of a wrongly recovered table fails.
"""

import copy
import shutil

import pytest
import yaml

from converter import oracle
from converter.convert import convert
from converter.errors import ConvertError
from converter.metagraph import recover
from converter.metagraph import reference as graph_reference

pytest.importorskip("tensorflow", reason="the reference runs the .meta graph in TensorFlow")
pytest.importorskip("onnxruntime", reason="the ports run in onnxruntime")
from converter.verify import verify  # noqa: E402


@pytest.mark.parametrize("name, ema", [("residual", False), ("flatten_fc", True)])
def test_the_graph_at_inference_is_the_network_built_for_inference(meta_net, name, ema):
    fixture = meta_net(name)
    table = recover.recover_table(fixture.graph)
    outputs = graph_reference.run(fixture.checkpoint, table, fixture.input, ema=ema)
    comparison = oracle.compare(fixture.golden(ema=ema)["Logits"], outputs["Logits"])
    assert comparison.ok, comparison.max_abs


def test_verify_converts_and_checks_a_recovered_network(meta_net):
    fixture = meta_net("residual")
    report = verify(fixture.checkpoint, batch=1)
    assert report.ok, report.table()
    assert {backend.target for backend in report.backends} == {"torch", "onnx"}
    assert any(decision.startswith("reference: the .meta graph run by TensorFlow at Logits = Net/SpatialSqueeze")
               and "10 training-mode batch norms run with their moving statistics" in decision
               for decision in report.decisions)


def test_a_port_of_a_wrong_table_fails_verify(meta_net, tmp_path):
    fixture = meta_net("flatten_fc")
    data = recover.recover_data(fixture.graph)
    wrong = copy.deepcopy(data)
    kind = wrong["kinds"][wrong["layers"]["conv2"]["kind"]]["onnx"]
    kind["BatchNorm/gamma"], kind["BatchNorm/beta"] = kind["BatchNorm/beta"], kind["BatchNorm/gamma"]
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(data))
    port = convert(fixture.checkpoint, "onnx", tmp_path / "wrong.onnx", mapping=tmp_path / "wrong.yaml").output
    report = verify(fixture.checkpoint, [port], mapping=tmp_path / "net.yaml", batch=1)
    assert not report.ok and any(check.kind == "output" and check.name == "Logits" for check in report.failures())
    # a table reused without its graph has no reference to run
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in fixture.root.glob("model.ckpt.*"):
        if path.suffix != ".meta":
            shutil.copy(path, bare / path.name)
    with pytest.raises(ConvertError, match="put it beside the checkpoint as model.ckpt.meta"):
        verify(bare / "model.ckpt", [port], mapping=tmp_path / "net.yaml", batch=1)
