"""`batch` takes convert's per-model options (--no-top, --dtype, --opset, --ema auto), has --dry-run, and
leaves no lock behind."""

import json
import shutil
import subprocess
import sys

import pytest

from converter import batch, provenance


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "converter", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def fleet(small, tmp_path):
    """A folder of checkpoints with and without EMA shadows."""
    root = tmp_path / "zoo"
    shutil.copytree(small.root, root, ignore=shutil.ignore_patterns("*.npz", "*.npy", "model_v1.ckpt"))
    return root


def test_per_model_options_and_ema_auto(fleet, tmp_path):
    pytest.importorskip("torch", reason="reads the torch records")
    pytest.importorskip("onnx", reason="writes ONNX")
    out = tmp_path / "out"
    run = _cli("batch", fleet, "-o", out, "--to", "torch,onnx", "--ema", "auto", "--no-top", "--dtype", "float16",
               "--opset", "13", "-j", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert not (out / batch.LOCK_FILENAME).exists()
    trained = provenance.read(out / "train" / "model.ckpt-1234" / "model.ckpt-1234.pth")
    plain = provenance.read(out / "model.ckpt" / "model.pth")
    assert (trained["ema"], plain["ema"]) == ("true", "false")
    assert plain["include_top"] == "false" and plain["dtype"] == "float16" and "opset" not in plain
    assert provenance.read(out / "model.ckpt" / "model.onnx")["opset"] == "13"
    report = json.loads((out / batch.REPORT_JSON).read_text())
    notes = {model["id"]: model["targets"]["torch"]["notes"] for model in report["models"]}
    assert "EMA shadows used (--ema auto)" in notes["train/model.ckpt-1234"]
    assert any("raw values used" in note for note in notes["model.ckpt"])
    # the same fleet with --ema for every model fails where a checkpoint has no shadows
    strict = _cli("batch", fleet, "-o", tmp_path / "strict", "--ema", "-j", "1")
    assert strict.returncode == 1 and "no /ExponentialMovingAverage shadows" in (tmp_path / "strict" / "report.md").read_text()


def test_dry_run_writes_nothing(fleet, tmp_path):
    run = _cli("batch", fleet, "-o", tmp_path / "out", "--to", "torch,onnx", "--dry-run")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("2 models found; nothing written (--dry-run)")
    assert "model.ckpt -> model.ckpt/model.pth (inception_v3, 580 tensors)" in run.stdout
    assert not (tmp_path / "out").exists()


def test_opset_without_an_onnx_target_is_refused(fleet, tmp_path):
    run = _cli("batch", fleet, "-o", tmp_path / "out", "--to", "torch", "--opset", "13")
    assert run.returncode == 2 and "--opset applies to the onnx target only" in run.stderr
    assert not (tmp_path / "out").exists()
