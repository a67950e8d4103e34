"""One Options object: the command line's flags, the Python API's keyword arguments and a manifest's fields
give the same options; a batch output's key follows them; mapping.plan takes what they give."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from converter import mapping
from converter.batch import read_manifest, target_key
from converter.checkpoint import open_checkpoint
from converter.cli import batch as batch_command
from converter.cli import convert as convert_command
from converter.cli.options import options_from
from converter.errors import ConvertError
from converter.options import DEFAULTS, FLAGS, Options

# every option set away from its default, as each of the three vocabularies says it
FLAG_ARGS = ["--arch", "inception_v3", "--scope", "InceptionV3", "--ema", "auto", "--keep-background", "--no-aux",
             "--no-top", "--input-size", "299x299", "--dtype", "float16", "--lenient", "--opset", "13",
             "--input-layout", "nhwc", "--outputs", "Mixed_6e,Mixed_7c", "--external-data"]
API_KWARGS = dict(arch="inception_v3", scope="InceptionV3", ema="auto", background="keep", aux=False,
                  include_top=False, input_size=(299, 299), dtype="float16", strict=False, opset=13,
                  input_layout="nhwc", outputs=("Mixed_6e", "Mixed_7c"), external_data=True)
MANIFEST_ROW = dict(arch="inception_v3", scope="InceptionV3", ema="auto", background="keep", aux=False,
                    include_top=False, input_size="299x299", dtype="float16", strict=False, opset=13,
                    input_layout="nhwc", outputs=["Mixed_6e", "Mixed_7c"], external_data=True)


def _parsed(command, args):
    context = command.make_context(command.name, list(args))
    with context:
        return options_from(dict(context.params))


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "tables" / "net.yaml"
    path.parent.mkdir()
    path.write_bytes(mapping.load_table("inception_v3").path.read_bytes())
    return path


def test_flags_keywords_and_manifest_fields_give_the_same_options(tmp_path, table):
    from_flags = _parsed(batch_command.command, ["zoo", "-o", "out", *FLAG_ARGS, "--mapping", str(table)])
    from_api = Options.of(**API_KWARGS, mapping=table)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump([dict(MANIFEST_ROW, path="model.ckpt", mapping="tables/net.yaml")]))
    (model,) = read_manifest(manifest)
    assert from_flags == from_api == model.options == Options.of(dict(API_KWARGS, mapping=str(table)))
    # every field is set away from its default here: a field without a flag or a manifest name fails
    assert set(from_api.changed()) == set(FLAGS) == {field.name for field in dataclasses.fields(Options)}
    # a CSV manifest's text, and the earlier spellings of two fields, say the same
    csv = tmp_path / "fleet.csv"
    fields = {**MANIFEST_ROW, "outputs": "Mixed_6e;Mixed_7c", "mapping": "tables/net.yaml"}
    del fields["arch"], fields["strict"]
    fields.update(architecture="inception_v3", lenient="true")
    csv.write_text("path," + ",".join(fields) + "\nmodel.ckpt," + ",".join(str(v) for v in fields.values()) + "\n")
    (row,) = read_manifest(csv)
    assert row.options == from_api
    # convert takes the same flags (its --ema has no auto)
    convert_args = [arg for arg in FLAG_ARGS if arg != "auto"]
    assert _parsed(convert_command.command, ["model.ckpt", *convert_args, "--mapping", str(table)]) == \
        dataclasses.replace(from_api, ema=True)


def test_defaults_are_the_same_everywhere(tmp_path):
    manifest = tmp_path / "fleet.csv"
    manifest.write_text("path\nmodel.ckpt\n")
    assert _parsed(batch_command.command, ["zoo", "-o", "out"]) == _parsed(convert_command.command, ["m.ckpt"]) \
        == Options.of() == read_manifest(manifest)[0].options == Options(**DEFAULTS)


def test_an_unknown_manifest_field_is_refused_in_one_line(tmp_path):
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump([{"path": "model.ckpt", "no_top": True}]))
    run = subprocess.run([sys.executable, "-m", "converter", "batch", str(manifest), "-o", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.startswith(f"error: {manifest}, model 1: unknown field no_top; known: path, id, targets, arch,")
    assert run.stderr.count("\n") == 1 and "include_top" in run.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConvertError, match="unknown option no_top; known: arch, "):
        Options.of(no_top=True)


@pytest.mark.parametrize("row, message", [
    ({"ema": "maybe"}, "model 1: ema is 'maybe'; use true or false"),
    ({"lenient": "often"}, "model 1: lenient is 'often'; use true or false"),
    ({"dtype": "float64"}, "model 1: dtype is 'float64'; use float16, bfloat16"),
    ({"background": "purple"}, "model 1: background is 'purple'; use auto, keep, drop"),
    ({"input_size": "big"}, "model 1: input size 'big' must be H or HxW"),
    ({"opset": "new"}, "model 1: opset is 'new'; use a number"),
    ({"include_top": {"a": 1}}, "model 1: include_top is dict, where a single value belongs"),
])
def test_a_bad_manifest_value_names_the_row_and_field(tmp_path, row, message):
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump([dict(row, path="model.ckpt")]))
    with pytest.raises(ConvertError, match=message):
        read_manifest(manifest)


def test_the_state_key_follows_every_option():
    base = Options()
    key = target_key("c" * 32, "d" * 32, "onnx", "model.onnx", base)
    assert target_key("c" * 32, "d" * 32, "onnx", "model.onnx", Options.of(aux=True, include_top=None)) == key
    changed = Options.of(**API_KWARGS, mapping="/tables/net.yaml")
    keys = {field: target_key("c" * 32, "d" * 32, "onnx", "model.onnx",
                              dataclasses.replace(base, **{field: getattr(changed, field)})) for field in FLAGS}
    assert key not in keys.values() and len(set(keys.values())) == len(FLAGS)


def test_plan_arguments_are_what_mapping_plan_takes(small):
    table = mapping.load_table("inception_v3")
    with open_checkpoint(small.v2) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
    full = mapping.plan(shapes, table, "torch", **Options().plan_arguments())
    bare = mapping.plan(shapes, table, "torch", **Options(aux=False, include_top=False).plan_arguments())
    keys = {entry.key for entry in full.entries} - {entry.key for entry in bare.entries}
    assert "fc.weight" in keys and any(key.startswith("AuxLogits.") for key in keys)
    kept = mapping.plan(shapes, table, "torch", **Options(background="keep").plan_arguments())
    assert next(e for e in kept.entries if e.key == "fc.weight").shape[0] == 1001
    assert next(e for e in full.entries if e.key == "fc.weight").shape[0] == 1000


@pytest.mark.parametrize("fields, message", [
    ({"ema": "sometimes"}, "ema is 'sometimes'; use true, false or auto"),
    ({"aux": "no"}, "aux is 'no'; use true or false"),
    ({"input_layout": "chw"}, "input_layout is 'chw'; use nchw, nhwc"),
    ({"opset": True}, "opset is True; use a number"),
])
def test_options_refuse_values_they_cannot_mean(fields, message):
    with pytest.raises(ConvertError, match=message):
        Options(**fields)
