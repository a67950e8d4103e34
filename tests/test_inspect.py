"""``ckpt-convert inspect`` reports groups, flags and totals that agree with TensorFlow's own listing."""

import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from converter._text import counted
from converter.cli import inspect as inspect_cli

EMA = "ExponentialMovingAverage"
SLOTS = ("RMSProp", "RMSProp_1", "Adam", "Adam_1", "Momentum")
TOTAL_KEYS = {"all", "model", "ema", "slot", "other"}
REPORT_KEYS = {"schema", "path", "format", "kind", "architecture", "networks", "decisions", "totals", "groups", "variables",
               "graph", "bytes_read"}
VARIABLE_KEYS = {
    "name", "role", "shape", "dtype", "parameters", "bytes", "prefix", "model_scope", "block", "branch", "layer",
    "parameter", "suffixes", "ema", "slot", "kernel_hint", "object_path", "problem",
}  # fmt: skip


def run_inspect(*args):
    """``ckpt-convert inspect ARGS`` in this process; the click result."""
    result = CliRunner().invoke(inspect_cli.command, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def report_of(path):
    result = run_inspect(path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def run_cli(*args):
    """The installed command line in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "converter", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def tensorflow(reason):
    """TensorFlow, imported the way the reference imports it (torch first); skip without it."""
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf_slim") is None:
        pytest.skip(reason)
    from converter.reference import import_tensorflow

    return import_tensorflow()[0]


@pytest.fixture(scope="module")
def tf():
    return tensorflow("expected numbers come from TensorFlow's own checkpoint reader (needs the tf extra)")


def bucket(name):
    """The totals bucket of a fixture variable, read off its name without the parser."""
    last = name.split("/")[-1]
    if last in SLOTS:
        return "slot"
    if last == EMA:
        return "ema"
    return "other" if name == "global_step" else "model"


def tf_listing(tf, path):
    """``{name: (shape, dtype name, bytes)}`` as TensorFlow reads the checkpoint."""
    reader = tf.train.load_checkpoint(str(path))
    dtypes = reader.get_variable_to_dtype_map()
    listing = {}
    for name, shape in reader.get_variable_to_shape_map().items():
        count = math.prod(shape)
        listing[name] = (list(shape), dtypes[name].name, count * dtypes[name].size)
    return listing


def expected_totals(listing, keep=lambda name: True):
    totals = {key: {"variables": 0, "parameters": 0, "bytes": 0} for key in TOTAL_KEYS}
    for name, (shape, _, size) in listing.items():
        if keep(name):
            for key in ("all", bucket(name)):
                totals[key]["variables"] += 1
                totals[key]["parameters"] += math.prod(shape)
                totals[key]["bytes"] += size
    return totals


def write_v2(tf, prefix, tensors):
    """A V2 bundle holding exactly ``tensors`` ({name: array}), written by TensorFlow's own SaveV2 op."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[name]) for name in names],
    )
    return prefix


@pytest.mark.parametrize("kind", ["v2", "v1", "train"])
def test_totals_and_variables_match_tensorflow(small, tf, kind):
    path = getattr(small, kind)
    listing = tf_listing(tf, path)
    report = report_of(path)
    assert report["totals"] == expected_totals(listing)
    assert report["format"] == ("v1" if kind == "v1" else "v2") and report["kind"] == "slim"
    assert report["architecture"] == "inception_v3"
    assert {v["name"]: (v["shape"], v["dtype"], v["bytes"]) for v in report["variables"]} == listing
    for variable in report["variables"]:
        name = variable["name"]
        assert variable["parameters"] == math.prod(listing[name][0])
        assert variable["ema"] == name.endswith("/" + EMA)
        assert variable["slot"] == (name.split("/")[-1] if name.split("/")[-1] in SLOTS else None)
        assert variable["role"] == ("global_step" if name == "global_step" else bucket(name))


@pytest.mark.parametrize(
    "scope, level",
    [
        ("InceptionV3", "model"),
        ("InceptionV3/Mixed_6c", "block"),
        ("InceptionV3/Mixed_6c/Branch_2", "branch"),
        ("InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1", "layer"),
        ("InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5", "layer"),
        ("InceptionV3/AuxLogits", "block"),
        ("InceptionV3/Logits/Conv2d_1c_1x1", "layer"),
        ("InceptionV3/Conv2d_1a_3x3", "layer"),
    ],
)
def test_group_totals_match_tensorflow(small, tf, scope, level):
    listing = tf_listing(tf, small.train)
    groups = {group["scope"]: group for group in report_of(small.train)["groups"]}
    assert groups[scope]["level"] == level
    assert groups[scope]["totals"] == expected_totals(listing, lambda name: name.startswith(scope + "/"))


def test_every_layer_is_a_group(small, tf):
    listing = tf_listing(tf, small.v2)
    layers = set()
    for name in listing:
        components = name.split("/")
        layers.add("/".join(components[:-2] if components[-2] == "BatchNorm" else components[:-1]))
    report = report_of(small.v2)
    assert {g["scope"] for g in report["groups"] if g["level"] == "layer"} == layers
    assert len([g for g in report["groups"] if g["level"] == "model"]) == 1


def test_json_keys_are_stable(small):
    report = report_of(small.train)
    assert set(report) == REPORT_KEYS and report["schema"] == inspect_cli.SCHEMA
    assert set(report["totals"]) == TOTAL_KEYS
    assert all(set(variable) == VARIABLE_KEYS for variable in report["variables"])
    assert all(set(group) == {"scope", "level", "totals"} for group in report["groups"])
    assert all(set(group["totals"]) == TOTAL_KEYS for group in report["groups"])
    # every documented key is named in the command's help
    help_text = run_inspect("--help").output
    assert all(key in help_text for key in REPORT_KEYS | VARIABLE_KEYS | TOTAL_KEYS)


def test_text_groups_flags_and_totals(small, tf):
    listing = tf_listing(tf, small.train)
    output = run_inspect(small.train).output
    lines = output.splitlines()
    assert "architecture inception_v3" in lines[0]
    assert any(line.startswith("InceptionV3 ") for line in lines)
    assert any(line.startswith("  Mixed_6c ") for line in lines)
    assert any(line.startswith("    Branch_2 ") for line in lines)
    assert any(line.startswith("      Conv2d_0d_7x1 ") for line in lines)
    ema = [line for line in lines if line.strip().startswith(f"weights/{EMA} ")]
    assert ema and all(line.endswith("[ema]") for line in ema)
    assert sum("[slot RMSProp_1]" in line for line in lines) == sum(n.endswith("/RMSProp_1") for n in listing)
    assert any(line.split()[:1] == ["global_step"] and line.endswith("[global_step]") for line in lines)
    totals = expected_totals(listing)
    for key in TOTAL_KEYS:
        t = totals[key]
        summary = f"{counted(t['variables'], 'variable')}, {counted(t['parameters'], 'parameter')}, {counted(t['bytes'], 'byte')}"
        assert f"{key}:".ljust(7) + " " + summary in output


def test_prefixed_checkpoint_is_detected_and_grouped_under_its_prefix(small, tf, tmp_path):
    reader = tf.train.load_checkpoint(str(small.v2))
    tensors = {f"tower_0/{name}": reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    tensors["global_step"] = np.int64(7)
    report = report_of(write_v2(tf, tmp_path / "prefixed.ckpt", tensors))
    assert report["architecture"] == "inception_v3"
    model = [v for v in report["variables"] if v["role"] == "model"]
    assert len(model) == len(tensors) - 1
    assert {(v["prefix"], v["model_scope"]) for v in model} == {("tower_0", "InceptionV3")}
    assert [g["scope"] for g in report["groups"] if g["level"] == "model"] == ["tower_0/InceptionV3"]
    assert report["totals"]["other"]["variables"] == 1


def test_unknown_architecture_and_unrecognised_names(tf, tmp_path):
    tensors = {
        "vgg_16/fc6/weights": np.ones((7, 7, 8, 4), np.float32),
        "vgg_16/fc6/biases": np.ones(4, np.float32),
        "vgg_16/fc6/weights/Momentum": np.ones((7, 7, 8, 4), np.float32),
        "a": np.float32(1),
        "labels/vocabulary": np.array([b"cat", b"dog"]),
    }
    report = report_of(write_v2(tf, tmp_path / "other.ckpt", tensors))
    assert report["architecture"] == "unknown" and report["kind"] == "slim"
    roles = {v["name"]: v["role"] for v in report["variables"]}
    assert roles == {
        "vgg_16/fc6/weights": "model", "vgg_16/fc6/biases": "model", "vgg_16/fc6/weights/Momentum": "slot",
        "a": "unrecognised", "labels/vocabulary": "unrecognised",
    }  # fmt: skip
    problems = {v["name"]: v["problem"] for v in report["variables"]}
    assert "'a'" in problems["a"] and problems["vgg_16/fc6/weights"] is None
    strings = next(v for v in report["variables"] if v["name"] == "labels/vocabulary")
    assert strings["dtype"] == "string" and strings["shape"] == [2]
    parameters = 7 * 7 * 8 * 4 + 4
    assert report["totals"]["model"] == {"variables": 2, "parameters": parameters, "bytes": parameters * 4}
    assert report["totals"]["slot"]["variables"] == 1 and report["totals"]["other"]["variables"] == 2
    text = run_inspect(tmp_path / "other.ckpt").output
    assert "architecture unknown" in text.splitlines()[0]
    assert any(line.split()[:1] == ["a"] and "[unrecognised]" in line for line in text.splitlines())


def test_tf2_checkpoint_is_reported_by_object_path(tf, tmp_path):
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("the TF2 checkpoint's optimizer slots are made by tf-keras (needs the tf extra)")
    import tf_keras

    net = tf.Module()
    net.kernel = tf.Variable(tf.ones([4, 3]))
    net.bias = tf.Variable(tf.zeros([3]))
    optimizer = tf_keras.optimizers.legacy.Adam()
    optimizer.apply_gradients([(tf.ones([4, 3]), net.kernel), (tf.ones([3]), net.bias)])
    path = tf.train.Checkpoint(net=net, optimizer=optimizer).write(str(tmp_path / "tf2" / "ckpt"))

    report = report_of(path)
    assert (report["format"], report["kind"], report["architecture"]) == ("tf2", "tf2", "unknown")
    assert report["groups"] == [] and report["totals"]["model"]["variables"] == 0
    objects = {v["object_path"]: v for v in report["variables"] if v["object_path"]}
    assert objects["net/kernel"]["role"] == "object" and objects["net/kernel"]["shape"] == [4, 3]
    slots = sorted(v["object_path"] for v in report["variables"] if v["role"] == "slot")
    assert slots == [f"net/{p}/.OPTIMIZER_SLOT/optimizer/{s}" for p in ("bias", "kernel") for s in ("m", "v")]
    assert report["totals"]["slot"] == {"variables": 4, "parameters": 30, "bytes": 120}
    assert report["totals"]["all"]["variables"] == len(tf_listing(tf, path))
    assert "TF2 object-based (not TF-Slim)" in run_inspect(path).output


@pytest.mark.parametrize("make", ["garbage", "missing", "empty"])
def test_not_a_checkpoint_is_one_line_and_non_zero(tmp_path, make):
    path = tmp_path / "model.ckpt"
    if make == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif make == "empty":
        path.write_bytes(b"")
    result = run_cli("inspect", path)
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"garbage")
    result = run_cli("inspect", path, "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_json_from_the_installed_command(small):
    result = run_cli("inspect", small.v2, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["model"]["variables"] == 388


def test_inspect_imports_no_framework(small):
    code = (
        "import sys\n"
        "from converter.cli.inspect import build_report, render_text\n"
        f"render_text(build_report({str(small.train)!r}))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch', 'keras', 'tf_keras'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
