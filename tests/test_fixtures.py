"""The committed fixtures are real TensorFlow checkpoints with the expected variables and live golden outputs."""

import numpy as np
import pytest

from converter import oracle

tf = pytest.importorskip("tensorflow", reason="the fixtures are checked with TensorFlow's own reader")
reference = pytest.importorskip("converter.reference")

EMA = "/ExponentialMovingAverage"


def degenerate_reasons(name, value):
    """Why an end point would make a useless golden output (empty list when it is fine)."""
    reasons = []
    if not np.isfinite(value).all():
        reasons.append(f"{name} has non-finite values")
    if value.std() <= 1e-3:
        reasons.append(f"{name} is near constant (std {value.std():.2g})")
    if value.ndim == 2 and (value.std(axis=1) <= 1e-3).any():
        reasons.append(f"{name} is constant across classes")
    return reasons


def trivial_reasons(name, value):
    """Why a variable's value would hide a mapping bug (zeros, ones, constant, non-positive variance)."""
    reasons = []
    if value.size > 1 and np.all(value == value.flat[0]):
        reasons.append(f"{name} is constant {value.flat[0]}")
    if name.endswith("moving_variance") and (value <= 0).any():
        reasons.append(f"{name} has non-positive variance")
    return reasons


def test_degenerate_checks_fail_on_bad_values():
    assert degenerate_reasons("Logits", np.ones((2, 1001)))
    assert degenerate_reasons("Logits", np.tile(np.arange(1001.0), (2, 1)) * [[1], [0]])
    assert degenerate_reasons("Mixed_5b", np.full((2, 3, 3, 4), np.nan))
    assert trivial_reasons("a/BatchNorm/beta", np.zeros(8))
    assert trivial_reasons("a/BatchNorm/moving_variance", np.linspace(-1, 1, 8))


def _read_all(path):
    reader = tf.train.load_checkpoint(str(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def expected_shapes(small):
    return reference.variable_shapes(
        "inception_v3", num_classes=small.meta["num_classes"], depth_multiplier=small.meta["depth_multiplier"]
    )


@pytest.mark.parametrize("kind", ["v2", "v1"])
def test_model_checkpoints_hold_exactly_the_slim_variables(small, expected_shapes, kind):
    values = _read_all(getattr(small, kind))
    assert {name: value.shape for name, value in values.items()} == expected_shapes
    problems = [reason for name, value in values.items() for reason in trivial_reasons(name, value)]
    assert not problems
    assert not any(name.endswith("/gamma") for name in values), "slim's InceptionV3 batch norm has no gamma"


def test_v1_and_v2_hold_the_same_values(small):
    v1, v2 = _read_all(small.v1), _read_all(small.v2)
    assert v1.keys() == v2.keys()
    for name in v2:
        np.testing.assert_array_equal(v1[name], v2[name], err_msg=name)


def test_v1_fixture_is_a_single_file_checkpoint(small):
    assert small.v1.is_file()
    assert not small.v1.with_name(small.v1.name + ".index").exists()


def test_training_checkpoint_has_ema_slots_and_global_step(small, expected_shapes):
    raw = _read_all(small.v2)
    train = _read_all(small.train)
    assert train["global_step"] == small.meta["global_step"]
    for name in expected_shapes:
        np.testing.assert_array_equal(train[name], raw[name], err_msg=name)
        shadow = train[name + EMA]
        assert shadow.shape == raw[name].shape
        assert not np.array_equal(shadow, raw[name]), f"{name}{EMA} equals the raw value"
        assert not trivial_reasons(name + EMA, shadow)
    trainable = [n for n in expected_shapes if not n.endswith(("moving_mean", "moving_variance"))]
    for name in trainable:
        for slot in ("RMSProp", "RMSProp_1"):
            assert train[f"{name}/{slot}"].shape == raw[name].shape
    assert len(train) == 1 + 2 * len(expected_shapes) + 2 * len(trainable)


@pytest.mark.parametrize("ema", [False, True], ids=["raw", "ema"])
def test_golden_outputs_are_alive(small, ema):
    golden = small.golden(ema=ema)
    assert set(golden) == set(small.meta["end_points"])
    assert small.input.shape == (small.meta["batch"], 299, 299, 3) and small.meta["batch"] >= 2
    assert small.input.min() >= -1 and small.input.max() <= 1
    problems = [reason for name, value in golden.items() for reason in degenerate_reasons(name, value)]
    assert not problems
    assert golden["Logits"].shape == (small.meta["batch"], small.meta["num_classes"])


def test_ema_golden_differs_from_raw(small):
    raw, ema = small.golden(), small.golden(ema=True)
    assert not oracle.compare(raw["Logits"], ema["Logits"]).ok


@pytest.mark.parametrize("kind", ["v2", "v1"])
def test_golden_outputs_reproduce(small, kind):
    rerun = reference.run_reference(getattr(small, kind), small.input, end_points=small.meta["end_points"])
    for name, value in small.golden().items():
        comparison = oracle.compare(value, rerun[name])
        assert comparison.ok, f"{name}: max |delta| {comparison.max_abs:.3g} > {comparison.bound:.3g}"


def test_reference_infers_the_depth_multiplier(small):
    shapes = {name: value.shape for name, value in _read_all(small.v2).items()}
    inferred = reference.infer_depth_multiplier("inception_v3", shapes)
    assert reference.variable_shapes("inception_v3", depth_multiplier=inferred) == shapes


def test_full_size_fixture(full):
    golden = full.golden()
    assert golden["Logits"].shape == (full.meta["batch"], 1001)
    assert not [r for name, value in golden.items() for r in degenerate_reasons(name, value)]
