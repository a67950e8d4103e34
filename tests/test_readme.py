"""The README's command and code blocks run as written, top to bottom, in the folder it describes.

The folder (``model.ckpt``, ``train/``, ``custom/``, ``other/``, ``zoo/``, ``more/``, ``runs/flowers/``,
``old/model.ckpt``, ``fleet.yaml``, ``cat.jpg``) is built from the fixtures; every ``sh`` and ``python``
block runs in it in order (shell blocks with ``set -euo pipefail``: a failing line fails its block), so a
later block sees what an earlier one wrote, as a reader following the README would. A block marked
``<!-- not run: REASON -->`` on the line before its fence is left out, with that reason.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import link_checkpoint

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
FIXTURES = README.parent / "fixtures"
RUNNABLE = ("sh", "python")
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (\S.*?) -->\s*$")

pytestmark = pytest.mark.xdist_group("readme")


def blocks(text):
    """Every fenced block of ``text``: ``(line, language, body, reason it is not run or None)``."""
    for match in FENCE.finditer(text):
        indent, language, body = match.groups()
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        marked = NOT_RUN.search(before)
        body = "\n".join(row[len(indent):] for row in body.splitlines())
        yield line, language, body, marked.group(1) if marked else None


def run_block(language, body, cwd, timeout=900):
    """Run one block as a reader would: a shell block line by line, stopping at the first failure."""
    command = ["bash", "-euo", "pipefail", "-c", body] if language == "sh" else [sys.executable, "-c", body]
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _training_run(fixture, folder):
    link_checkpoint(fixture.train, folder / fixture.train.name)
    shutil.copy(fixture.train.parent / "checkpoint", folder / "checkpoint")


def walkthrough(folder, full, small, custom, manifest):
    """The folder the README's blocks run in."""
    from PIL import Image

    link_checkpoint(full.v2, folder / "model.ckpt")
    _training_run(small, folder / "train")
    link_checkpoint(custom.checkpoint, folder / "custom" / "model.ckpt-20000")
    link_checkpoint(custom.checkpoint, folder / "other" / "model.ckpt")
    (folder / "other" / "model.ckpt.meta").unlink()
    link_checkpoint(small.v2, folder / "zoo" / "inception_v3.ckpt")
    link_checkpoint(FIXTURES / "mobilenet_v1" / "model.ckpt", folder / "zoo" / "mobilenet_v1" / "model.ckpt")
    link_checkpoint(FIXTURES / "mobilenet_v2" / "model.ckpt", folder / "more" / "mobilenet_v2" / "model.ckpt")
    _training_run(small, folder / "runs" / "flowers")
    (folder / "old").mkdir()
    (folder / "old" / "model.ckpt").symlink_to(small.v1)
    (folder / "fleet.yaml").write_text(manifest)
    pixels = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "cat.jpg", quality=90)
    return folder


def _manifest(text):
    """The manifest example under "Batch migration": the YAML block that lists ``models:``."""
    found = [body for _, language, body, _ in blocks(text) if language == "yaml" and body.startswith("models:")]
    assert len(found) == 1, "README.md: expected one manifest example (a yaml block starting 'models:')"
    return found[0]


def test_every_block_is_found_and_every_skipped_one_says_why():
    text = README.read_text()
    found = list(blocks(text))
    fences = sum(1 for line in text.splitlines() if line.lstrip().startswith("```"))
    assert fences == 2 * len(found), "a fence the block pattern does not pair: a block would go unchecked"
    runnable = [block for block in found if block[1] in RUNNABLE]
    skipped = [(line, why) for line, _, _, why in runnable if why]
    assert len(runnable) - len(skipped) >= 10 and len(skipped) < len(runnable) / 3, skipped


def test_a_failing_line_fails_its_block(tmp_path):
    result = run_block("sh", "ckpt-convert --to torch nowhere.ckpt\necho after", tmp_path, timeout=120)
    assert result.returncode == 2 and "nowhere.ckpt" in result.stderr and "after" not in result.stdout
    assert run_block("python", "raise SystemExit('no')", tmp_path, timeout=60).returncode == 1


def test_the_readme_runs_as_written_in_order(full, small, meta_net, tmp_path):
    for module in ("tensorflow", "onnxruntime", "keras", "torchvision", "timm", "PIL"):
        pytest.importorskip(module, reason="the README's blocks use every backend")
    text = README.read_text()
    folder = walkthrough(tmp_path / "readme", full, small, meta_net("residual"), _manifest(text))
    ran = []
    for line, language, body, why in blocks(text):
        if language not in RUNNABLE or why:
            continue
        result = run_block(language, body, folder)
        assert result.returncode == 0, (f"README.md line {line}: the {language} block failed "
                                        f"(exit {result.returncode}):\n{body}\n--- stdout\n{result.stdout[-4000:]}"
                                        f"\n--- stderr\n{result.stderr[-4000:]}")
        ran.append(line)
    # what the blocks say they wrote is there
    for written in ("model.pth", "model.safetensors", "train/model.ckpt-1234.pth", "model.h5", "headless.h5",
                    "model.onnx", "half.onnx", "external.onnx.data", "net.yaml", "other/model.pth",
                    "report.json", "report.xml", "ported/report.json", "out/raw.npz"):
        assert (folder / written).exists(), f"no {written} after the README's blocks"
