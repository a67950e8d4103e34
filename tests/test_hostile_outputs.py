"""Where outputs go: batch model ids that collide with the batch's own files, links out of OUTDIR,
output names too long or already taken by a link, writes that fail midway: one-line errors, nothing
written anywhere else."""

import subprocess
import sys

import pytest
import yaml

import crafted
from converter import batch
from converter.errors import ConvertError


# --- batch model ids, links out of OUTDIR


@pytest.mark.parametrize("model_id, message", [
    ("report.json", "has a part named as a file the batch writes"),
    ("..", "is empty"),
    (".batch.lock", "has a part named as a file the batch writes"),
    ("x/state.json", "has a part named as a file the batch writes"),
    ("x" * 300, "has a part longer than 200 bytes"),
])
def test_model_ids_that_collide_with_the_batchs_own_files(tmp_path, model_id, message):
    crafted.tiny(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump([{"path": "tiny.ckpt", "id": model_id}]))
    crafted.assert_error(crafted.run_one(["batch", str(manifest), "-o", str(tmp_path / "out")])[0], message)
    assert not (tmp_path / "out").exists()  # refused for its sources, a batch leaves no OUTDIR behind


def test_nested_model_ids_and_row_types(tmp_path):
    crafted.tiny(tmp_path / "a")
    crafted.tiny(tmp_path / "b")
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump([{"path": "a/tiny.ckpt", "id": "x"}, {"path": "b/tiny.ckpt", "id": "x/y"}]))
    typed = tmp_path / "typed.yaml"
    typed.write_text("- {path: a/tiny.ckpt, targets: 5}\n")
    results, _ = crafted.run_limited([{"discover": [str(nested)]}, {"discover": [str(typed)]}])
    crafted.assert_error(results[0], "would be written inside the folder of")
    crafted.assert_error(results[1], "targets must be names")


def test_links_never_lead_batch_outputs_out_of_outdir(tmp_path):
    crafted.tiny(tmp_path / "zoo")
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    (out / "tiny.ckpt").symlink_to(outside)  # the model's folder, a link out of OUTDIR
    (outside / "precious").write_text("keep")
    report = batch.run_batch([tmp_path / "zoo"], out, jobs=1, mapping=str(tmp_path / "zoo" / "tiny.yaml"))
    (record,) = report.models
    assert record.status == "failed" and "a link leads it out of" in record.reason
    assert crafted.files(outside) == ["precious"]
    (out / "tiny.ckpt").unlink()
    (out / "zoo").symlink_to(outside)  # a folder above the model's, nothing created through it
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(yaml.safe_dump([{"path": "zoo/tiny.ckpt", "id": "zoo/deeper/model"}]))
    (record,) = batch.run_batch([manifest], out, jobs=1, mapping=str(tmp_path / "zoo" / "tiny.yaml")).models
    assert "a link leads it out of" in record.reason and crafted.files(outside) == ["precious"]
    (out / "zoo").unlink()
    (out / ".batch.lock").unlink(missing_ok=True)  # a finished batch removes it
    (out / ".batch.lock").symlink_to(outside / "precious")  # opening the lock for writing once truncated it
    with pytest.raises(ConvertError, match="cannot lock the output directory"):
        batch.run_batch([tmp_path / "zoo"], out, jobs=1)
    assert (outside / "precious").read_text() == "keep"


# --- output paths: long names, dangling links, unreadable paths


def test_output_paths_that_cannot_be_written(tmp_path):
    ckpt, table = crafted.tiny(tmp_path)
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "nowhere")
    (tmp_path / "dir.yaml").mkdir()
    cases = [["--mapping", str(table), str(ckpt), "-o", str(tmp_path / ("x" * 300 + ".pth"))],
             ["--mapping", str(table), str(ckpt), "-o", str(tmp_path / "dangling.pth")],
             ["--mapping", str(tmp_path / "dir.yaml"), str(ckpt)],
             ["--mapping", str(table), str(ckpt), "-o", str(tmp_path / ("y" * 250 + ".pth"))]]
    results, _ = crafted.run_limited(cases)
    crafted.assert_error(results[0], "cannot write here (File name too long)")
    crafted.assert_error(results[1], "already exists; pass --force to overwrite it")
    crafted.assert_error(results[2], "is a directory. (see ckpt-convert convert --help)")
    assert results[3]["code"] == 0, results[3]  # a name that fits gets a temporary name that fits
    assert (tmp_path / "dangling.pth").is_symlink() and not list(tmp_path.glob(".*.partial"))


# --- a write that fails midway (a full disk)


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5", ".pth", ".onnx"])
def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(tmp_path, suffix):
    ckpt, table = crafted.tiny(tmp_path)
    target = {".h5": "keras", ".weights.h5": "keras", ".pth": "torch", ".onnx": "onnx"}[suffix]
    out = tmp_path / "out"
    out.mkdir()
    # a file size limit makes writes past 1 KiB fail (EFBIG) as a full disk does (ENOSPC), through the same calls
    script = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); from converter import cli; "
              f"cli.main(['--to', '{target}', '--mapping', '{table}', '{ckpt}', '-o', '{out / ('model' + suffix)}'])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=crafted.ROOT, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "cannot write (File too large); nothing was written" in done.stderr
    assert crafted.files(out) == []
