"""Every path form a user may pass resolves to the same checkpoint (or a one-line CheckpointError)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

from converter.checkpoint import open_checkpoint
from converter.errors import CheckpointError

V2_FILES = ("model.ckpt.index", "model.ckpt.data-00000-of-00001")


def _copy(small, directory, names=V2_FILES):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(small.root / name, directory / name)
    return directory


@pytest.mark.parametrize("suffix", ["", ".index", ".data-00000-of-00001"])
def test_v2_prefix_index_and_data_file(small, suffix):
    with open_checkpoint(f"{small.v2}{suffix}") as ckpt:
        assert (ckpt.format, ckpt.path, len(ckpt)) == ("v2", small.v2, 388)


def test_pathlib_and_str(small):
    assert open_checkpoint(str(small.v2)).names() == open_checkpoint(pathlib.Path(small.v2)).names()


def test_v1_file(small):
    with open_checkpoint(small.v1) as ckpt:
        assert (ckpt.format, ckpt.path) == ("v1", small.v1)


def test_global_step_suffixed_prefix(small):
    assert small.train.name == "model.ckpt-1234"
    with open_checkpoint(small.train) as ckpt:
        assert ckpt.path == small.train and "global_step" in ckpt


def test_directory_with_relative_state_file(small):
    with open_checkpoint(small.train.parent) as ckpt:
        assert ckpt.path == small.train.parent / "model.ckpt-1234"


def test_directory_with_absolute_state_file(small, tmp_path):
    directory = _copy(small, tmp_path / "run")
    (directory / "checkpoint").write_text(f'model_checkpoint_path: "{directory / "model.ckpt"}"\n')
    assert open_checkpoint(directory).path == directory / "model.ckpt"


def test_state_file_from_another_machine_falls_back_to_the_directory(small, tmp_path):
    directory = _copy(small, tmp_path / "run")
    (directory / "checkpoint").write_text('model_checkpoint_path: "/gone/training/model.ckpt"\n')
    assert open_checkpoint(directory).path == directory / "model.ckpt"


def test_state_file_naming_nothing(small, tmp_path):
    directory = _copy(small, tmp_path / "run")
    (directory / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n')
    with pytest.raises(CheckpointError, match=r"checkpoint: names .*model.ckpt-999, which does not exist"):
        open_checkpoint(directory)


@pytest.mark.parametrize("names", [V2_FILES, ("model_v1.ckpt",)])
def test_directory_holding_exactly_one_checkpoint(small, tmp_path, names):
    directory = _copy(small, tmp_path / "one", names)
    (directory / "notes.txt").write_text("not a checkpoint")
    expected = directory / ("model.ckpt" if names == V2_FILES else "model_v1.ckpt")
    assert open_checkpoint(directory).path == expected


def test_directory_holding_two_checkpoints(small, tmp_path):
    directory = _copy(small, tmp_path / "two", (*V2_FILES, "model_v1.ckpt"))
    with pytest.raises(CheckpointError, match=r"holds 2 checkpoints \(model.ckpt, model_v1.ckpt\); pass one of them"):
        open_checkpoint(directory)


def test_data_file_without_its_index(small, tmp_path):
    directory = _copy(small, tmp_path / "x", V2_FILES[1:])
    with pytest.raises(CheckpointError, match=r"the index file .*model.ckpt.index is missing"):
        open_checkpoint(directory / V2_FILES[1])


def test_nonexistent_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such checkpoint"):
        open_checkpoint(tmp_path / "model.ckpt")


def test_reader_and_dump_import_no_framework():
    code = (
        "import sys, converter.checkpoint, converter.cli.dump, converter.writers.safetensors; "
        "print(sorted(m for m in ('tensorflow', 'torch', 'keras', 'google.protobuf') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
