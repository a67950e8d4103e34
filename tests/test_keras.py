"""Keras target: the outputs load into the real keras.applications.InceptionV3 and match TF-Slim.

Each Keras model is built once per module; the full-size checkpoint and its golden TF outputs come
from the ``full`` fixture.
"""

import contextlib
import importlib
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import scratch
from converter import mapping, oracle, reference, table_schema
from converter.checkpoint import open_checkpoint
from converter.cli import main

# TF-Slim end point -> the keras.applications.InceptionV3 layer that outputs it
END_POINTS = {"Mixed_5b": "mixed0", "Mixed_6e": "mixed7", "Mixed_7c": "mixed10"}
LOGITS = "Logits"
# two rows whose tensors have the same shapes: swapping their keras names loads without complaint
SWAPPED = ("Mixed_6c/Branch_1/Conv2d_0b_1x7", "Mixed_6d/Branch_1/Conv2d_0b_1x7")
# variant -> (output file name, ckpt-convert flags, keras.applications arguments, end points compared)
VARIANTS = {
    "h5": ("model.h5", [], {}, (*END_POINTS, LOGITS)),
    "no_top": ("headless.h5", ["--no-top"], {"include_top": False}, tuple(END_POINTS)),
    "weights_h5": ("model.weights.h5", [], {}, (*END_POINTS, LOGITS)),
    "background": ("background.h5", ["--keep-background"], {"classes": 1001}, (*END_POINTS, LOGITS)),
    "swapped": ("swapped.h5", ["--mapping", "swapped.yaml"], {}, (*END_POINTS, LOGITS)),
}
AUTO_NAME = re.compile(r"^(?P<base>.*?)(?:_(?P<index>\d+))?$")

# Keras 3.15's TensorFlow backend converts tensors with np.array(x), which numpy 2 warns about on every predict
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def keras():
    # torch's bundled native libraries must load before TensorFlow's (Keras's backend here) or the process crashes
    for module in reference.PRELOAD_BEFORE_TENSORFLOW:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    pytest.importorskip("h5py", reason="Keras weight files are HDF5")
    pytest.importorskip("tensorflow", reason="keras.applications runs on the TensorFlow backend here")
    return pytest.importorskip("keras", reason="loads the outputs into keras.applications.InceptionV3")


@pytest.fixture(scope="module")
def table():
    return mapping.load_table("inception_v3")


def _convert(*args):
    main(["--from", "slim", "--to", "keras", *map(str, args)])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, full, table):
    """Variant -> the file ckpt-convert wrote for it."""
    with scratch(tmp_path_factory, "keras") as root:
        raw = table_schema.read(table.path)
        first, second = (raw["layers"][layer] for layer in SWAPPED)
        first["keras"], second["keras"] = second["keras"], first["keras"]
        (root / "swapped.yaml").write_text(yaml.safe_dump(raw))
        paths = {}
        for variant, (name, flags, _, _) in VARIANTS.items():
            flags = [str(root / flag) if flag.endswith(".yaml") else flag for flag in flags]
            _convert(full.v2, "-o", root / name, *flags)
            paths[variant] = root / name
        yield paths


@pytest.fixture(scope="module")
def models(keras, outputs):
    """Variant -> keras.applications.InceptionV3 holding that output's weights, built on first use."""
    built = {}

    def get(variant):
        if variant not in built:
            _, _, arguments, _ = VARIANTS[variant]
            path = str(outputs[variant])
            if path.endswith(".weights.h5"):
                model = keras.applications.InceptionV3(weights=None, classifier_activation=None, **arguments)
                model.load_weights(path)
            else:
                model = keras.applications.InceptionV3(weights=path, classifier_activation=None, **arguments)
            built[variant] = model
        return built[variant]

    return get


@pytest.fixture(scope="module")
def end_points(keras, models, full):
    """Variant -> {TF-Slim end point: the Keras model's output on the golden input}."""
    computed = {}

    def get(variant):
        if variant not in computed:
            model = models(variant)
            names = list(END_POINTS)
            tensors = [model.get_layer(END_POINTS[name]).output for name in names]
            if model.get_layer(END_POINTS["Mixed_7c"]).output is not model.output:
                names.append(LOGITS)
                tensors.append(model.output)
            values = keras.Model(model.inputs, tensors).predict(full.input, verbose=0)
            computed[variant] = {name: np.asarray(value) for name, value in zip(names, values)}
        return computed[variant]

    return get


def _golden(full, table, variant):
    golden = full.golden()
    if variant != "background":
        golden[LOGITS] = np.delete(golden[LOGITS], table.background_class, axis=1)
    return golden


@pytest.mark.parametrize(
    "variant, point",
    [(v, p) for v in ("h5", "no_top", "weights_h5", "background") for p in VARIANTS[v][3]],
)
def test_end_points_match_tf_slim(end_points, full, table, variant, point):
    got = end_points(variant)
    assert set(got) == set(VARIANTS[variant][3])
    comparison = oracle.compare(_golden(full, table, variant)[point], got[point])
    assert comparison.ok, f"{variant} {point}: max |delta| {comparison.max_abs:.3g} > {comparison.bound:.3g}"


def test_background_class_is_kept_or_dropped(models):
    assert models("h5").output.shape[-1] == 1000
    assert models("background").output.shape[-1] == 1001
    assert not any(layer.name == "predictions" for layer in models("no_top").layers)


def test_swapped_rows_are_caught(end_points, full, table):
    shapes = {entry.key: entry.shape for entry in mapping.plan(_shapes(full.v2), table, "keras").entries}

    def layer_shapes(layer):
        names = table.layers[layer].name("keras").values()
        return sorted(shape for key, shape in shapes.items() if key.partition("/")[0] in names)

    assert layer_shapes(SWAPPED[0]) == layer_shapes(SWAPPED[1]), "the swap must load without a shape error"
    golden = _golden(full, table, "swapped")
    got = end_points("swapped")
    assert oracle.compare(golden["Mixed_5b"], got["Mixed_5b"]).ok  # computed before the swapped layers
    for point in ("Mixed_6e", "Mixed_7c", LOGITS):
        assert not oracle.compare(golden[point], got[point]).ok, f"{point} passed with two rows swapped"


def _shapes(path):
    with open_checkpoint(path) as ckpt:
        return {name: ckpt.info(name).shape for name in ckpt.names()}


def _fresh_process_name(name, first_index):
    """A layer's name as the first model of a fresh process gets it (auto-name indices renumbered from 0)."""
    match = AUTO_NAME.match(name)
    index = int(match["index"] or 0) - first_index[match["base"]]
    return match["base"] if index == 0 else f"{match['base']}_{index}"


def test_order_is_keras_model_layers_order(models, table):
    model = models("h5")
    first_index = {}
    for layer in model.layers:
        match = AUTO_NAME.match(layer.name)
        base, index = match["base"], int(match["index"] or 0)
        first_index[base] = min(first_index.get(base, index), index)
    layers = [layer for layer in model.layers if layer.weights]
    names = [_fresh_process_name(layer.name, first_index) for layer in layers]
    assert names == list(table.targets["keras"].order)
    roles = {name: role for row in table.layers.values() for role, name in (row.name("keras") or {}).items()}
    for name, layer in zip(names, layers):
        assert roles[name].replace("_", "") == type(layer).__name__.lower(), f"{name}: role is not its class"


def test_weights_h5_equals_what_keras_saves(models, outputs, tmp_path):
    import h5py

    saved = tmp_path / "keras.weights.h5"
    models("weights_h5").save_weights(saved)

    def datasets(path):
        found = {}

        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                found[name] = item[()]

        with h5py.File(path, "r") as f:
            f.visititems(visit)
        return found

    ours, keras_own = datasets(outputs["weights_h5"]), datasets(saved)
    assert sorted(ours) == sorted(keras_own)
    for name, value in keras_own.items():
        assert ours[name].dtype == value.dtype and np.array_equal(ours[name], value), name


def test_legacy_h5_layout(outputs, table):
    import h5py

    order = list(table.targets["keras"].order)
    with h5py.File(outputs["h5"], "r") as f:
        assert [n.decode() for n in f.attrs["layer_names"]] == order
        assert f.attrs["backend"] in ("tensorflow", b"tensorflow") and f.attrs["keras_version"]
        assert [n.decode() for n in f["conv2d"].attrs["weight_names"]] == ["conv2d/kernel:0"]
        assert [n.decode() for n in f["batch_normalization"].attrs["weight_names"]] == [
            f"batch_normalization/{w}:0" for w in ("beta", "moving_mean", "moving_variance")
        ]
        assert [n.decode() for n in f["predictions"].attrs["weight_names"]] == [
            "predictions/kernel:0", "predictions/bias:0"
        ]
        assert f["predictions/predictions/kernel:0"].shape == (2048, 1000)
    with h5py.File(outputs["no_top"], "r") as f:
        assert [n.decode() for n in f.attrs["layer_names"]] == order[:-1]


def test_writing_needs_neither_keras_nor_tensorflow(full, tmp_path):
    output = tmp_path / "model.h5"
    code = (
        "import sys; from converter.cli import main; "
        f"main(['--to', 'keras', {str(full.v2)!r}, '-o', {str(output)!r}]); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert output.stat().st_size > 90_000_000


def _one_line_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        _convert(*args)
    assert exit_.value.code != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def test_existing_output_needs_force(full, tmp_path, capsys):
    output = tmp_path / "model.h5"
    output.write_bytes(b"keep me")
    error = _one_line_error(capsys, full.v2, "-o", output)
    assert "already exists" in error and "--force" in error
    assert output.read_bytes() == b"keep me"
    _convert(full.v2, "-o", output, "--force")
    assert output.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_depth_multiplied_checkpoint_is_refused(small, tmp_path, capsys):
    error = _one_line_error(capsys, small.v2, "-o", tmp_path / "small.h5")
    assert "depth_multiplier 1.0" in error and "InceptionV3/Conv2d_1a_3x3 out 16 (needs 32)" in error
    assert list(tmp_path.iterdir()) == []


def test_other_architecture_is_refused(keras, tmp_path, capsys):
    tf, _ = reference.import_tensorflow()
    prefix = tmp_path / "mobilenet.ckpt"
    with tf.Graph().as_default():
        for name, shape in (("MobilenetV1/Conv2d_0/weights", [3, 3, 3, 8]), ("MobilenetV1/Logits/biases", [1001])):
            tf.compat.v1.get_variable(name, shape)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(session, str(prefix))
    error = _one_line_error(capsys, prefix, "-o", tmp_path / "mobilenet.h5")
    assert "no mapping table" in error and "MobilenetV1/Conv2d_0/weights" in error
    assert not (tmp_path / "mobilenet.h5").exists()


def test_weights_are_bit_exact(outputs, full, table):
    import h5py

    with open_checkpoint(full.v2) as ckpt, h5py.File(outputs["h5"], "r") as f:
        kernel = ckpt.read("InceptionV3/Logits/Conv2d_1c_1x1/weights")
        # [1, 1, 2048, 1001] -> [2048, 1000]: the 1x1 convolution as a Dense kernel, class 0 dropped
        assert np.array_equal(f["predictions/predictions/kernel:0"][()], kernel[0, 0, :, 1:])
        plan = mapping.plan(_shapes(full.v2), table, "keras")
        for entry in plan.entries:
            name = entry.key.partition("/")[0]
            value = f[f"{name}/{entry.key}:0"][()]
            assert value.dtype == np.float32 and np.array_equal(value, entry.value(ckpt.read)), entry.key


def test_dtype_casts_floating_tensors(full, tmp_path, capsys):
    import h5py
    import ml_dtypes

    _convert(full.v2, "-o", tmp_path / "half.h5", "--dtype", "float16")
    _convert(full.v2, "-o", tmp_path / "brain.weights.h5", "--dtype", "bfloat16")
    with open_checkpoint(full.v2) as ckpt:
        weights = ckpt.read("InceptionV3/Conv2d_1a_3x3/weights")
    with h5py.File(tmp_path / "half.h5", "r") as f:
        assert np.array_equal(f["conv2d/conv2d/kernel:0"][()], weights.astype(np.float16))
    with h5py.File(tmp_path / "brain.weights.h5", "r") as f:
        dataset = f["layers/conv2d/vars/0"]
        assert dataset.attrs["dtype"] == "bfloat16"  # how Keras marks bfloat16, which HDF5 lacks
        assert dataset[()].tobytes() == weights.astype(ml_dtypes.bfloat16).tobytes()
    error = _one_line_error(capsys, full.v2, "-o", tmp_path / "brain.h5", "--dtype", "bfloat16")
    assert "legacy .h5" in error and "float16" in error


def test_long_name_lists_are_chunked_as_keras_reads_them(keras, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from converter.writers.keras import HDF5_OBJECT_HEADER_LIMIT, _set_strings

    names = [f"layer_{i:05d}_" + "x" * 200 for i in range(1000)]  # about 210 kB: over the header limit
    with h5py.File(tmp_path / "names.h5", "w") as f:
        _set_strings(f, "layer_names", names)
        assert "layer_names" not in f.attrs and all(a.nbytes <= HDF5_OBJECT_HEADER_LIMIT for a in f.attrs.values())
        assert legacy_h5_format.load_attributes_from_hdf5_group(f, "layer_names") == names


def test_keras_2_loads_the_legacy_h5(keras, outputs, full, table):
    tf_keras = pytest.importorskip("tf_keras", reason="Keras 2 (tf-keras, the tf extra) reads the same legacy layout")
    model = tf_keras.applications.InceptionV3(weights=str(outputs["h5"]), classifier_activation=None)
    logits = model.predict(full.input, verbose=0)
    assert oracle.compare(_golden(full, table, "h5")[LOGITS], logits).ok


def test_background_kept_does_not_load_as_1000_classes(keras, outputs):
    with pytest.raises(ValueError, match="predictions"):
        keras.applications.InceptionV3(weights=str(outputs["background"]))


def test_no_top_weights_h5_has_no_classifier(full, tmp_path):
    import h5py

    _convert(full.v2, "-o", tmp_path / "headless.weights.h5", "--no-top")
    with h5py.File(tmp_path / "headless.weights.h5", "r") as f:
        assert "dense" not in f["layers"] and len(f["layers"]) == 2 * 94


def test_dry_run_checks_what_the_keras_layouts_constrain(small, full):
    from converter.convert import convert
    from converter.errors import ConvertError

    with pytest.raises(ConvertError, match="depth_multiplier 1.0"):
        convert(small.v2, to="keras", output=small.root / "never.h5", dry_run=True)
    with pytest.raises(ConvertError, match="cannot hold bfloat16"):
        convert(full.v2, to="keras", output=full.root / "never.h5", dtype="bfloat16", dry_run=True)
    assert convert(full.v2, to="keras", output=full.root / "never.h5", dry_run=True).dry_run
    assert not (small.root / "never.h5").exists() and not (full.root / "never.h5").exists()
