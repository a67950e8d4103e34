"""Usage first: arguments that cannot work are one line and exit 2 before TensorFlow loads; one vocabulary
across targets (the target from the suffix, options refused alike); `list`; `--json -` is stdout."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from converter.convert import convert
from converter.errors import ConvertError

# a child that sees the named modules as not installed (importlib finds None in sys.modules), then runs the CLI
WITHOUT = "import sys; [sys.modules.__setitem__(m, None) for m in {absent!r}]; from converter.cli import main; main({args!r})"


def _cli(*args, absent=()):
    args = [str(arg) for arg in args]
    command = [sys.executable, "-c", WITHOUT.format(absent=list(absent), args=args)]
    return subprocess.run(command, capture_output=True, text=True)


def _one_line_error(run, *words):
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: ") and all(word in run.stderr for word in words), run.stderr


def test_verify_usage_errors_exit_2_before_tensorflow(small, tmp_path):
    (tmp_path / "model.txt").write_text("")
    cases = [
        ((tmp_path / "mistyped.pth",), ("mistyped.pth", "no such file")),
        ((tmp_path / "model.txt",), ("model.txt", "known suffixes")),
        ((tmp_path,), ("cannot verify this kind of file",)),
    ]
    for ported, words in cases:
        started = time.perf_counter()
        # TensorFlow cannot load in the child: an error found after it would be an ImportError instead
        run = _cli("verify", small.v2, *ported, absent=("tensorflow.python",))
        _one_line_error(run, *words)
        assert time.perf_counter() - started < 10


def test_missing_runtimes_are_one_line_errors_when_asked_for(small, tmp_path):
    pytest.importorskip("torch", reason="writes the torch port")
    port = convert(small.v2, output=tmp_path / "model.pth").output
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG")
    _one_line_error(_cli("verify", small.v2, port, "--torch-model", "timm", absent=("timm",)), "--torch-model timm",
                    "timm")
    _one_line_error(_cli("verify", small.v2, port, "--input", image, absent=("PIL",)), "cat.png", "Pillow")
    _one_line_error(_cli("verify", small.v2, port, absent=("torch",)), "model.pth", "torch", "pip install")
    _one_line_error(_cli("verify", small.v2, port, absent=("tensorflow",)), "TensorFlow", "ckpt-convert[tf]")
    _one_line_error(_cli("verify", small.v2, port, "--json", tmp_path / "no" / "r.json"), "r.json", "does not exist")


def test_without_torchvision_its_advisory_backend_is_skipped_with_a_reason(small):
    pytest.importorskip("torch", reason="the exact module still runs")
    pytest.importorskip("tensorflow", reason="verify runs the TF-Slim reference")
    run = _cli("verify", small.v2, "--json", "-", absent=("torchvision",))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    skipped = [backend for backend in report["backends"] if backend["name"] == "torchvision (skipped)"]
    assert len(skipped) == 1 and "torchvision not installed" in skipped[0]["note"]
    assert report["ok"] and "Traceback" not in run.stderr


def test_load_errors_name_every_key(small, tmp_path):
    torch = pytest.importorskip("torch", reason="loads the torch port")
    from converter import mapping
    from converter.checkpoint import open_checkpoint
    from converter.runtimes import torch as runtime

    port = convert(small.v2, output=tmp_path / "model.pth").output
    state = torch.load(port, weights_only=True)
    gone = ["Mixed_7c.branch_pool.conv.weight", "AuxLogits.fc.bias", "Conv2d_1a_3x3.bn.running_mean"]
    for key in gone:
        del state[key]
    torch.save(state, tmp_path / "cut.pth")
    with open_checkpoint(small.v2) as ckpt:
        plan = mapping.plan({n: ckpt.info(n).shape for n in ckpt.names()}, mapping.load_table("inception_v3"), "torch")
    with pytest.raises(ConvertError) as error:
        runtime.run(tmp_path / "cut.pth", plan, small.input[:1])
    assert all(key in str(error.value) for key in gone), str(error.value)
    assert "\n" not in str(error.value)


def test_the_target_comes_from_the_output_suffix(small, tmp_path):
    pytest.importorskip("onnx", reason="writes the ONNX model")
    run = _cli(small.v2, "-o", tmp_path / "model.onnx", "--opset", "13")
    assert run.returncode == 0, run.stderr
    assert "-> onnx" in run.stdout and (tmp_path / "model.onnx").is_file()
    assert convert(small.v2, output=tmp_path / "m.safetensors").target == "torch"


@pytest.mark.parametrize("target", ["torch", "keras"])
def test_options_a_target_does_not_take_are_refused_alike(small, tmp_path, target):
    for flag, value in (("--opset", "13"), ("--input-layout", "nhwc"), ("--outputs", "Mixed_6e")):
        run = _cli("--to", target, small.v2, "-o", tmp_path / f"m{'.pth' if target == 'torch' else '.h5'}", flag, value)
        _one_line_error(run, f"{flag} does not apply to the {target} target (only onnx); drop it")


def test_json_dash_is_stdout(small, tmp_path):
    pytest.importorskip("torch", reason="writes a torch port")
    run = _cli(small.v2, "-o", tmp_path / "model.pth", "--json", "-")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["target"] == "torch" and result["provenance"]["architecture"] == "inception_v3"
    assert "source_shapes" not in result["provenance"] and not (tmp_path / "-").exists()
    plan = _cli(small.v2, "-o", tmp_path / "other.pth", "--dry-run", "--json")
    assert json.loads(plan.stdout)["dry_run"] is True


def test_list_shows_the_support_matrix(tmp_path):
    from converter import mapping

    text = _cli("list")
    assert text.returncode == 0
    for name in mapping.builtin_tables():
        assert f"\n{name}: input" in "\n" + text.stdout
    run = _cli("list", "--json", tmp_path / "matrix.json")
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert run.returncode == 0 and [entry["architecture"] for entry in data] == mapping.builtin_tables()
    v3 = next(entry for entry in data if entry["architecture"] == "inception_v3")
    assert v3["targets"]["keras"]["suffixes"] == [".h5", ".weights.h5"] and v3["background_class"] == 0
    assert any("AuxLogits" in note for note in v3["restrictions"])


def test_the_python_api_mirrors_the_commands(small, tmp_path):
    import converter.api as api

    assert set(api.__all__) == {"convert", "inspect", "dump", "verify", "batch", "load", "support"}
    assert all(callable(getattr(api, name)) and getattr(api, name).__doc__ for name in api.__all__)
    dumped = api.dump(small.v2, tmp_path / "raw.npz")
    with np.load(tmp_path / "raw.npz") as data:
        assert len(data.files) == dumped["tensors"] > 0
    assert api.inspect(small.v2)["architecture"] == "inception_v3"


def test_counts_take_their_noun_in_the_right_number():
    from converter._text import counted

    assert [counted(n, "variable") for n in (0, 1, 2, 1234)] == ["0 variables", "1 variable", "2 variables",
                                                                  "1,234 variables"]
    assert counted(1, "batch norm") == "1 batch norm" and counted(3, "is_training placeholder").endswith("placeholders")


def test_sizes_are_printed_in_binary_units():
    from converter._text import size

    assert [size(n) for n in (0, 1023, 1024, 1_363_148, 3 << 30)] == ["0 B", "1023 B", "1.0 KiB", "1.3 MiB", "3.0 GiB"]
