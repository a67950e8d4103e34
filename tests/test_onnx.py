"""ONNX target: the written model checks, runs in onnxruntime and matches TF-Slim's golden end points."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

from converter import mapping, oracle, table_schema
from converter.checkpoint import open_checkpoint
from converter.errors import ConvertError
from converter.writers import onnx as onnx_writer

onnx = pytest.importorskip("onnx", reason="the ONNX target needs the onnx extra")
ort = pytest.importorskip("onnxruntime", reason="the ONNX target runs in onnxruntime")

# float16 keeps 11 significant bits and rounds after each of ~95 layers: measured max |delta| is
# 3.5e-3 * max(1, max|ref|) on the fixtures (float32: 3e-6), so float16 is judged at 1e-2, and on top-1.
FLOAT16_ATOL = oracle.REDUCED_PRECISION_ATOL
PROVIDERS = ["CPUExecutionProvider", "CUDAExecutionProvider"]


@pytest.fixture(scope="module")
def table():
    return mapping.load_table("inception_v3")


def _plan(path, table, **options):
    with open_checkpoint(path) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
    return mapping.plan(shapes, table, "onnx", **options)


def _write(tmp_path, checkpoint, table, *, ema=False, background="auto", aux=None, drop=(), **options):
    plan = _plan(checkpoint, table, ema=ema, background=background, aux=aux, drop=drop)
    path = tmp_path / "model.onnx"
    with open_checkpoint(checkpoint) as ckpt:
        onnx_writer.save_onnx(plan, ckpt.read, path, **options)
    return path


def _run(path, images, *, layout=onnx_writer.NCHW, dtype=np.float32, provider="CPUExecutionProvider"):
    """Run the model on NHWC ``images``; returns ``{output: array}`` with maps in NHWC, as TF gives them."""
    if provider not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no {provider} here")
    session = ort.InferenceSession(str(path), providers=[provider])
    feed = images if layout == onnx_writer.NHWC else images.transpose(onnx_writer.NHWC_TO_NCHW)
    values = session.run(None, {onnx_writer.INPUT_NAME: feed.astype(dtype)})
    outputs = {}
    for meta, value in zip(session.get_outputs(), values):
        if value.ndim == 4 and layout == onnx_writer.NCHW:
            value = value.transpose(onnx_writer.NCHW_TO_NHWC)
        outputs[meta.name] = value
    return outputs


def _reference(golden, name, *, keep_background=False):
    ref = golden[name]
    return ref if keep_background or ref.ndim != 2 else np.delete(ref, 0, axis=1)  # the plan drops class 0


def _assert_matches(golden, outputs, *, keep_background=False, atol=oracle.ATOL):
    assert set(outputs) == set(golden)
    failed = {}
    for name in golden:
        result = oracle.compare(_reference(golden, name, keep_background=keep_background), outputs[name], atol=atol)
        if not result.ok or result.top_k.get(1, 1.0) < 1.0:
            failed[name] = (result.max_abs, result.bound, result.top_k)
    assert not failed, f"end points off the TF-Slim reference: {failed}"


@pytest.mark.parametrize("fixture", ["v2", "v1", "train_ema"])
def test_every_end_point_matches_golden(small, table, tmp_path, fixture):
    checkpoint = small.train if fixture == "train_ema" else getattr(small, fixture)
    ema = fixture == "train_ema"
    path = _write(tmp_path, checkpoint, table, ema=ema, outputs=table.facts.end_points)
    onnx.checker.check_model(str(path), full_check=True)
    _assert_matches(small.golden(ema=ema), _run(path, small.input))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_default_output_is_logits(small, table, tmp_path, provider):
    outputs = _run(_write(tmp_path, small.v2, table), small.input, provider=provider)
    assert list(outputs) == ["Logits"]
    assert oracle.compare(_reference(small.golden(), "Logits"), outputs["Logits"]).ok


def test_nhwc_input_gives_nhwc_maps(small, table, tmp_path):
    path = _write(tmp_path, small.v2, table, input_layout="nhwc", outputs=table.facts.end_points)
    model = onnx.load(str(path))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    # InceptionV3 pads alike at every size (its strided windows are VALID): height and width stay symbolic
    assert dims == [onnx_writer.BATCH_DIM, onnx_writer.HEIGHT_DIM, onnx_writer.WIDTH_DIM, 3]
    _assert_matches(small.golden(), _run(path, small.input, layout=onnx_writer.NHWC))


def test_keep_background_keeps_1001_classes(small, table, tmp_path):
    path = _write(tmp_path, small.v2, table, background="keep", outputs=["AuxLogits"])
    outputs = _run(path, small.input)
    assert outputs["Logits"].shape == (2, 1001)
    for name in ("AuxLogits", "Logits"):
        assert oracle.compare(small.golden()[name], outputs[name]).ok


def test_dynamic_batch(small, table, tmp_path):
    path = _write(tmp_path, small.v2, table)
    single = _run(path, small.input[:1])["Logits"]
    assert single.shape == (1, 1000)
    assert oracle.compare(_reference(small.golden(), "Logits")[:1], single).ok


@pytest.mark.parametrize("opset", list(onnx_writer.OPSETS))
def test_every_supported_opset_checks_and_runs(small, table, tmp_path, opset):
    path = _write(tmp_path, small.v2, table, opset=opset)
    model = onnx.load(str(path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    onnx.checker.check_model(model, full_check=True)
    assert oracle.compare(_reference(small.golden(), "Logits"), _run(path, small.input)["Logits"]).ok


def test_default_opset(small, table, tmp_path):
    model = onnx.load(str(_write(tmp_path, small.v2, table)))
    assert model.opset_import[0].version == onnx_writer.DEFAULT_OPSET


@pytest.mark.parametrize("opset", [onnx_writer.MIN_OPSET - 1, onnx_writer.MAX_OPSET + 1, "17", 17.0, True])
def test_opset_outside_the_range_is_refused(small, table, tmp_path, opset):
    with pytest.raises(ConvertError, match="opset"):
        _write(tmp_path, small.v2, table, opset=opset)
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("options", [{"input_layout": "chwn"}, {"dtype": "bfloat16"}, {"color": "blue"},
                                     {"outputs": ["Mixed_9z"]}])
def test_bad_options_are_refused(small, table, tmp_path, options):
    with pytest.raises(ConvertError):
        _write(tmp_path, small.v2, table, **options)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_float16_model(small, table, tmp_path, provider):
    path = _write(tmp_path, small.v2, table, dtype="float16", outputs=table.facts.end_points)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    float16 = onnx.TensorProto.FLOAT16
    assert {t.data_type for t in model.graph.initializer} == {float16}
    assert model.graph.input[0].type.tensor_type.elem_type == float16
    outputs = _run(path, small.input, dtype=np.float16, provider=provider)
    assert {value.dtype for value in outputs.values()} == {np.dtype(np.float16)}
    _assert_matches(small.golden(), outputs, atol=FLOAT16_ATOL)


def test_without_aux_head(small, table, tmp_path):
    path = _write(tmp_path, small.v2, table, aux=False, outputs=["Mixed_7c"])
    assert not any(t.name.startswith("AuxLogits/") for t in onnx.load(str(path)).graph.initializer)
    assert set(_run(path, small.input)) == {"Mixed_7c", "Logits"}
    with pytest.raises(ConvertError, match="AuxLogits"):
        _write(tmp_path, small.v2, table, aux=False, outputs=["AuxLogits"])


def test_headless_plan_outputs_features(small, table, tmp_path):
    path = _write(tmp_path, small.v2, table, drop=("Logits",))
    outputs = _run(path, small.input)
    assert list(outputs) == ["Mixed_7c"]
    assert oracle.compare(small.golden()["Mixed_7c"], outputs["Mixed_7c"]).ok


def test_initializers_are_the_plans_keys(small, table, tmp_path):
    plan = _plan(small.v2, table)
    model = onnx.load(str(_write(tmp_path, small.v2, table)))
    assert {t.name: tuple(t.dims) for t in model.graph.initializer} == {e.key: e.shape for e in plan.entries}


def _modified_table(table, tmp_path, change):
    data = table_schema.read(table.path)
    change(data)
    path = tmp_path / "modified.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return mapping.load_table(path)


def test_swapped_rows_are_caught(small, table, tmp_path):
    def swap(data):  # two same-shape ([out]) onnx rows of every conv layer take each other's variable
        rows = data["kinds"]["conv_bn_nogamma_relu"]["onnx"]
        rows["BatchNorm/beta"], rows["BatchNorm/moving_mean"] = rows["BatchNorm/moving_mean"], rows["BatchNorm/beta"]

    wrong = _modified_table(table, tmp_path, swap)
    path = _write(tmp_path, small.v2, wrong, outputs=table.facts.end_points)
    outputs = _run(path, small.input)
    golden = small.golden()
    for name in golden:
        assert not oracle.compare(_reference(golden, name), outputs[name]).ok, name


def test_missing_transpose_is_caught(small, table, tmp_path):
    def identity(data):
        data["kinds"]["conv_bn_nogamma_relu"]["onnx"]["weights"].pop("transform")

    # the first kernel, [3, 3, 3, 16] left in HWIO, reads as 3 output channels of a 3x16 window
    with pytest.raises(ConvertError, match="Conv2d_1a_3x3.* has shape"):
        _write(tmp_path, small.v2, _modified_table(table, tmp_path, identity))
    assert not (tmp_path / "model.onnx").exists()


def test_background_class_not_dropped_is_caught(small, table, tmp_path):
    def keep(data):
        for row in data["kinds"]["logits"]["onnx"].values():
            row.pop("classes")

    outputs = _run(_write(tmp_path, small.v2, _modified_table(table, tmp_path, keep)), small.input)
    with pytest.raises(ValueError, match="shape"):
        oracle.compare(_reference(small.golden(), "Logits"), outputs["Logits"])


def test_writing_needs_neither_torch_nor_tensorflow(small, table, tmp_path):
    script = f"""
import sys
from converter import mapping
from converter.checkpoint import open_checkpoint
from converter.writers.onnx import save_onnx
with open_checkpoint({str(small.v2)!r}) as ckpt:
    shapes = {{name: ckpt.info(name).shape for name in ckpt.names()}}
    plan = mapping.plan(shapes, mapping.load_table("inception_v3"), "onnx")
    save_onnx(plan, ckpt.read, {str(tmp_path / "model.onnx")!r})
loaded = sorted(m for m in ("torch", "tensorflow", "onnxruntime") if m in sys.modules)
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    assert (tmp_path / "model.onnx").stat().st_size > 0


# A table small enough to check TensorFlow's padding directly: a 9x8 input makes stride-2 SAME
# windows pad one pixel more at the end than at the start, which ONNX's symmetric defaults miss.
TINY = {
    "schema": 1,
    "architecture": "tiny",
    "scope": "Tiny",
    "detect": ["Conv/weights"],
    "facts": {
        "num_classes": 5,
        "background_class": 0,
        "input": {"height": 9, "width": 8, "channels": 3, "range": [-1.0, 1.0]},
        "batch_norm_epsilon": 0.001,
        "end_points": ["Conv", "Pools", "Logits"],
    },
    "graph": [
        {"name": "Conv", "layer": "Conv", "stride": 2},
        {"name": "Pools", "concat": [
            [{"max_pool": [3, 3], "stride": 2}],
            [{"avg_pool": [3, 3], "stride": 2}],
            [{"avg_pool": [2, 2], "stride": 2}],
        ]},
        {"name": "Logits", "nodes": [{"avg_pool": "global"}, {"flatten": True}, {"layer": "Fc"}]},
    ],
    "layers": {"Conv": {"kind": "conv_bn", "onnx": "Conv"}, "Logits/Fc": {"kind": "logits", "onnx": "Logits/Fc"}},
}


def test_tensorflow_same_padding_and_average_pooling(table, tmp_path):
    reference = pytest.importorskip("converter.reference")
    pytest.importorskip("tensorflow", reason="TensorFlow's own ops are the reference")
    tf, _ = reference.import_tensorflow()
    expanded = table_schema.read(table.path)
    kinds = {"conv_bn": expanded["kinds"][expanded["layers"]["Conv2d_1a_3x3"]["kind"]], "logits": expanded["kinds"]["logits"]}
    data = dict(TINY, kinds={name: {k: v for k, v in kind.items() if k in ("compute", "params", "onnx")}
                             for name, kind in kinds.items()})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    tiny = mapping.load_table(path)
    rng = np.random.default_rng(0)
    values = {
        "Tiny/Conv/weights": rng.normal(size=(3, 3, 3, 4)),
        "Tiny/Conv/BatchNorm/beta": rng.normal(size=4),
        "Tiny/Conv/BatchNorm/moving_mean": rng.normal(size=4),
        "Tiny/Conv/BatchNorm/moving_variance": rng.uniform(0.5, 1.5, size=4),
        "Tiny/Logits/Fc/weights": rng.normal(size=(1, 1, 12, 5)),
        "Tiny/Logits/Fc/biases": rng.normal(size=5),
    }
    values = {name: value.astype(np.float32) for name, value in values.items()}
    plan = mapping.plan({name: value.shape for name, value in values.items()}, tiny, "onnx")
    onnx_path = tmp_path / "tiny.onnx"
    onnx_writer.save_onnx(plan, values.__getitem__, onnx_path, outputs=["Conv", "Pools"])
    model = onnx.load(str(onnx_path))
    # strided 'SAME' windows pad by the input's size (one more at the end where the total is odd, as TF)
    auto = [a.s.decode() for n in model.graph.node for a in n.attribute if a.name == "auto_pad"]
    assert auto and set(auto) == {onnx_writer.SAME_UPPER}
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == [onnx_writer.HEIGHT_DIM, onnx_writer.WIDTH_DIM]

    # odd and even sizes: TensorFlow pads them differently, and one model must follow both
    for height, width in ((9, 8), (10, 7)):
        images = rng.uniform(-1, 1, size=(2, height, width, 3)).astype(np.float32)
        conv = tf.nn.conv2d(images, values["Tiny/Conv/weights"], strides=2, padding="SAME")
        conv = tf.nn.relu(tf.nn.batch_normalization(
            conv, values["Tiny/Conv/BatchNorm/moving_mean"], values["Tiny/Conv/BatchNorm/moving_variance"],
            values["Tiny/Conv/BatchNorm/beta"], None, 0.001))
        pools = tf.concat([
            tf.nn.max_pool2d(conv, 3, 2, "SAME"),
            tf.nn.avg_pool2d(conv, 3, 2, "SAME"),
            tf.nn.avg_pool2d(conv, 2, 2, "SAME"),
        ], axis=3)
        features = tf.reduce_mean(pools, axis=[1, 2])
        logits = features @ values["Tiny/Logits/Fc/weights"][0, 0] + values["Tiny/Logits/Fc/biases"]
        golden = {"Conv": conv.numpy(), "Pools": pools.numpy(), "Logits": logits.numpy()}
        _assert_matches(golden, _run(onnx_path, images))


def test_full_size_matches_golden(full, table, tmp_path):
    path = _write(tmp_path, full.v2, table, outputs=table.facts.end_points)
    onnx.checker.check_model(str(path), full_check=True)
    _assert_matches(full.golden(), _run(path, full.input))


def test_command_line(small, tmp_path):
    cli = pytest.importorskip("converter.cli")
    output = tmp_path / "model.onnx"
    cli.main(["--from", "slim", "--to", "onnx", str(small.v2), "-o", str(output), "--opset", str(onnx_writer.MAX_OPSET),
              "--input-layout", "nhwc", "--outputs", "Mixed_7c,AuxLogits"])
    assert onnx.load(str(output)).opset_import[0].version == onnx_writer.MAX_OPSET
    outputs = _run(output, small.input, layout=onnx_writer.NHWC)
    assert list(outputs) == ["Mixed_7c", "AuxLogits", "Logits"]
    golden = small.golden()
    assert all(oracle.compare(_reference(golden, name), value).ok for name, value in outputs.items())


def test_command_line_refuses_an_unsupported_opset(small, tmp_path, capsys):
    cli = pytest.importorskip("converter.cli")
    output = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--to", "onnx", str(small.v2), "-o", str(output), "--opset", str(onnx_writer.MIN_OPSET - 1)])
    assert exit_.value.code == ConvertError.exit_code
    assert f"use {onnx_writer.MIN_OPSET} to {onnx_writer.MAX_OPSET}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
