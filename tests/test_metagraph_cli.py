"""The commands on a checkpoint with its .meta: `map` writes a reusable table, `inspect` shows the graph,
`batch` converts what no built-in table fits and fails, with the reason, what cannot be recovered."""

import json
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from converter import mapping, table_schema
from converter.batch import run_batch
from converter.cli import cli
from converter.convert import convert
from converter.errors import GraphError, OutputExistsError

pytest.importorskip("onnxruntime", reason="the ports run in onnxruntime")
from converter.runtimes import onnx as onnx_runtime  # noqa: E402


def _invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def _copy(fixture, folder):
    folder.mkdir(parents=True)
    for path in fixture.root.glob("model.ckpt*"):
        shutil.copy(path, folder / path.name)
    return folder / "model.ckpt"


def test_map_writes_a_table_that_converts_as_the_graph_does(meta_net, tmp_path):
    fixture = meta_net("flatten_fc")
    table = tmp_path / "net.yaml"
    result = _invoke("map", fixture.checkpoint, "-o", table)
    assert result.exit_code == 0, result.output
    assert f"wrote {table}: 5 layers" in result.output and "Logits = Net/logits/BiasAdd" in result.output
    assert "is_training placeholders fed False: is_training" in result.output
    data = table_schema.read(table)
    assert mapping.validate(data) == [] and table.read_text().startswith("# Recovered by ckpt-convert")
    # reviewed and reused on a checkpoint with no .meta beside it
    checkpoint = _copy(fixture, tmp_path / "bare")
    (checkpoint.parent / "model.ckpt.meta").unlink()
    port = convert(checkpoint, "onnx", tmp_path / "net.onnx", mapping=table)
    outputs, _ = onnx_runtime.run(port.output, port.plan, fixture.input)
    np.testing.assert_allclose(outputs["Logits"], fixture.golden()["Logits"], atol=1e-4)
    with pytest.raises(OutputExistsError):
        _invoke("map", fixture.checkpoint, "-o", table)
    printed = _invoke("map", fixture.graph, "--outputs", "Net/fc4/Relu")
    assert printed.exit_code == 0 and yaml.safe_load(printed.output)["facts"]["end_points"] == ["fc4/Relu"]


def test_map_refuses_what_it_cannot_map(meta_net, tmp_path):
    bare = _copy(meta_net("residual"), tmp_path / "bare")
    (bare.parent / "model.ckpt.meta").unlink()
    with pytest.raises(GraphError, match="no model.ckpt.meta beside it"):
        _invoke("map", bare)
    with pytest.raises(GraphError, match="dilations are not supported"):
        _invoke("map", meta_net("unsupported").checkpoint)


def test_inspect_shows_the_graph(meta_net):
    fixture = meta_net("residual")
    text = _invoke("inspect", fixture.checkpoint).output
    assert "input images [?x33x33x3]; outputs Net/SpatialSqueeze" in text
    assert "10 batch norms in training mode, 1 dropout" in text and "ops: Identity " in text
    report = json.loads(_invoke("inspect", fixture.checkpoint, "--json").output)
    assert report["graph"]["outputs"] == ["Net/SpatialSqueeze"] and report["graph"]["ops"]["FusedBatchNormV3"] == 10
    assert report["graph"]["problems"] == []


def test_batch_converts_by_the_graph_and_fails_with_the_reason(meta_net, tmp_path):
    sources = tmp_path / "zoo"
    _copy(meta_net("residual"), sources / "residual")
    _copy(meta_net("unsupported"), sources / "unsupported")
    report = run_batch([sources], tmp_path / "out", targets=["onnx"], jobs=1)
    records = {record.id: record.to_dict() for record in report.models}
    assert records["residual/model.ckpt"]["status"] == "ok"
    assert records["residual/model.ckpt"]["architecture"] == "recovered from model.ckpt.meta"
    failed = records["unsupported/model.ckpt"]
    assert failed["status"] == "failed" and "dilations are not supported" in failed["reason"]
