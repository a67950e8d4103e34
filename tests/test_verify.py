"""`ckpt-convert verify` passes equivalent ports and turns red, naming the culprit, on every kind of wrong one."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch ports are checked with torch")
pytest.importorskip("tensorflow", reason="verify runs the TF-Slim reference in TensorFlow")

from converter.convert import convert  # noqa: E402
from converter.verify import verify  # noqa: E402


@pytest.fixture(scope="module")
def port(small, tmp_path_factory):
    """An honest .pth port of the small fixture."""
    path = tmp_path_factory.mktemp("port") / "model.pth"
    convert(small.v2, to="torch", output=path)
    return path


def _rewrite(source, target, change):
    state = torch.load(source, weights_only=True)
    change(state)
    torch.save(state, target)
    return target


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "converter", *map(str, args)], capture_output=True, text=True)


def _failed(report):
    return {(check.kind, check.name) for check in report.failures()}


def test_an_honest_port_is_equivalent(small, port):
    report = verify(small.v2, [port])
    assert report.ok, report.table()
    outputs = [c for c in report.checks if c.kind == "output"]
    assert {c.name for c in outputs} == set(small.meta["end_points"])
    assert all(c.metrics["max_abs"] <= c.metrics["bound"] for c in outputs)
    assert report.backends[0].device == "cpu"


def test_corrupted_port_names_the_tensor(small, port, tmp_path):
    def corrupt(state):
        state["Mixed_6b.branch7x7_2.conv.weight"][0, 0, 0, 3] += 0.5

    report = verify(small.v2, [_rewrite(port, tmp_path / "corrupt.pth", corrupt)])
    assert not report.ok
    assert ("weights", "Mixed_6b.branch7x7_2.conv.weight") in _failed(report)
    assert len([c for c in report.failures() if c.kind == "weights"]) == 1
    assert {"Mixed_6e", "Mixed_7c", "Logits"} <= {name for kind, name in _failed(report) if kind == "output"}
    assert "Mixed_5b" not in {name for kind, name in _failed(report) if kind == "output"}


def test_swapped_same_shape_tensors_are_caught(small, port, tmp_path):
    first, second = "Mixed_6c.branch7x7dbl_2.conv.weight", "Mixed_6c.branch7x7dbl_4.conv.weight"

    def swap(state):
        assert state[first].shape == state[second].shape
        state[first], state[second] = state[second].clone(), state[first].clone()

    report = verify(small.v2, [_rewrite(port, tmp_path / "swapped.pth", swap)])
    assert not report.ok
    assert {("weights", first), ("weights", second)} <= _failed(report)
    assert ("output", "Logits") in _failed(report)


def test_missing_transpose_is_caught(small, port, tmp_path, small_kernels=("Conv2d_2b_3x3.conv.weight",)):
    def naive(state):
        # a naive port reshapes the HWIO kernel into OIHW's shape instead of transposing it
        for key in small_kernels:
            out, inp, kh, kw = state[key].shape
            state[key] = state[key].permute(2, 3, 1, 0).contiguous().reshape(out, inp, kh, kw)

    report = verify(small.v2, [_rewrite(port, tmp_path / "naive.pth", naive)])
    assert not report.ok
    assert ("weights", small_kernels[0]) in _failed(report)
    assert ("output", "Mixed_5b") in _failed(report)


def test_wrong_class_count_is_caught(small, tmp_path):
    kept = tmp_path / "kept.pth"
    convert(small.v2, to="torch", output=kept, background="keep")
    # all 1001 classes in order is a faithful port; one declared to drop the background class is not
    assert "port classes 0..1000 = TF-Slim classes 0..1000" in verify(small.v2, [kept]).table()
    report = verify(small.v2, [kept], background="drop")
    assert not report.ok
    assert any(c.name == "class axis" and "1001 classes" in c.message for c in report.failures())
    assert verify(small.v2, [kept], background="keep").ok


def test_cli_exit_codes_and_reports(small, port, tmp_path):
    good = _cli("verify", small.v2, port, "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "EQUIVALENT" in good.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is True and len(data["checks"]) == 580 + 5
    suites = ET.parse(tmp_path / "r.xml").getroot()
    assert sum(int(s.get("tests")) for s in suites) == 585 and all(s.get("failures") == "0" for s in suites)

    bad = _rewrite(port, tmp_path / "bad.pth", lambda s: s["fc.bias"].mul_(-1))
    red = _cli("verify", small.v2, bad, "--junit", tmp_path / "bad.xml")
    assert red.returncode == 1
    assert "NOT EQUIVALENT" in red.stdout and "fc.bias" in red.stdout
    failures = ET.parse(tmp_path / "bad.xml").getroot().iter("failure")
    assert any("Logits" in f.get("message") for f in failures)


def test_input_from_npy(small, port, tmp_path):
    batch = tmp_path / "batch.npy"
    np.save(batch, small.input[:1])
    report = verify(small.v2, [port], input_file=batch)
    assert report.ok and "batch.npy (1x299x299x3)" in report.input
    np.save(batch, small.input[:, :100])
    result = _cli("verify", small.v2, port, "--input", batch)
    assert result.returncode == 2 and "NHWC" in result.stderr and "Traceback" not in result.stderr


def test_torchvision_drift_is_reported_with_its_size(full, tmp_path):
    pytest.importorskip("torchvision", reason="measures torchvision's Inception3")
    path = tmp_path / "full.pth"
    convert(full.v2, to="torch", output=path)
    report = verify(full.v2, [path], torch_model="torchvision")
    assert all(c.passed for c in report.checks if c.kind == "weights")
    drift = {c.name: c for c in report.failures() if c.kind == "output"}
    assert not report.ok and "Logits" in drift
    assert drift["Logits"].metrics["max_abs"] > drift["Logits"].metrics["bound"]
    assert "exceeds" in drift["Logits"].message
    exact = verify(full.v2, [path])
    assert exact.ok, exact.table()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_backends_report_their_device(small, port):
    report = verify(small.v2, [port], device="cuda")
    assert report.ok and report.backends[0].device.startswith("cuda")


def test_cuda_requested_without_a_gpu_is_a_clear_error(small, port):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = _cli("verify", small.v2, port, "--device", "cuda")
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_with_no_port_every_target_is_converted_and_checked(small):
    report = verify(small.train, ema=True)
    assert report.ok, report.table()
    names = {backend.name.split(" (")[0]: backend for backend in report.backends}
    assert {"torch exact", "onnxruntime", "torchvision"} <= set(names)
    assert names["torchvision"].advisory  # depth-multiplied weights do not fit its fixed channels
    assert names["keras"].name == "keras (not convertible)" and "depth_multiplier" in names["keras"].note
    onnx_points = {c.name for c in report.checks if c.kind == "output" and c.backend.startswith("onnxruntime")}
    assert onnx_points == set(small.meta["end_points"])
    assert "EQUIVALENT" in report.table()


def test_reduced_precision_port_gets_the_reduced_precision_bound(small, tmp_path):
    half = tmp_path / "half.pth"
    convert(small.v2, to="torch", output=half, dtype="float16")
    report = verify(small.v2, [half])
    assert report.ok, report.table()
    assert "reduced precision" in report.backends[0].note
    assert all(c.passed for c in report.checks if c.kind == "weights")  # bit-exact after the file's own cast
    assert not verify(small.v2, [half], atol=1e-4).ok


def test_damaged_or_retyped_ports_fail_with_a_reason(small, port, tmp_path):
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(port.read_bytes()[: port.stat().st_size // 2])
    report = verify(small.v2, [damaged])
    assert not report.ok and "cannot read" in report.failures()[0].message

    def as_float(state):
        state["Conv2d_1a_3x3.bn.num_batches_tracked"] = state["Conv2d_1a_3x3.bn.num_batches_tracked"].double()

    retyped = verify(small.v2, [_rewrite(port, tmp_path / "retyped.pth", as_float)])
    assert ("weights", "Conv2d_1a_3x3.bn.num_batches_tracked") in _failed(retyped)


def test_a_model_without_end_points_fails(small, tmp_path):
    from converter import mapping
    from converter.verify import compare_outputs

    checks = compare_outputs("x", small.golden(), {}, atol=1e-4)
    assert len(checks) == 1 and not checks[0].passed and "none of TF-Slim's end points" in checks[0].message
    assert mapping  # the module under test is importable without TensorFlow


def test_reports_are_written_atomically_and_errors_are_one_line(small, port, tmp_path):
    result = _cli("verify", small.v2, port, "--json", tmp_path / "missing" / "r.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "r.json" in errors[0] and "does not exist" in errors[0]


def test_checkpoint_under_an_outer_scope(small, tmp_path):
    import tensorflow as tf

    from converter.checkpoint import open_checkpoint

    prefixed = tmp_path / "tower.ckpt"
    with open_checkpoint(small.v2) as ckpt, tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(np.array(ckpt.read(name)), name=f"tower_0/{name}") for name in ckpt.names()]
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(variables).save(session, str(prefixed), write_meta_graph=False)
    port = tmp_path / "tower.pth"
    convert(prefixed, to="torch", output=port)
    report = verify(prefixed, [port])
    assert report.ok, report.table()
