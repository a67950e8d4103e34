"""Which checkpoint a user's path means: a V2 prefix, its ``.index`` or a data file, a V1 file,
or a directory (its ``checkpoint`` state file, else the one checkpoint it holds)."""

import os
import pathlib
import re

from converter import storage
from converter.checkpoint import _bundle
from converter.checkpoint._table import has_table_magic
from converter.errors import CheckpointError

STATE_FILENAME = "checkpoint"
# TensorFlow's state file names a few checkpoints in a few hundred bytes; more is not one
STATE_FILE_LIMIT = 1 << 20
# the text-format CheckpointState line naming the latest checkpoint
_STATE_PATH = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
# a V1 Saver with sharded=True writes <prefix>-00000-of-00002 ... and names them by this pattern
_V1_SHARD = re.compile(r"-\d{5}(-of-\d{5})$")
_V1_SHARD_WILDCARD = "-?????"
_GLOB_CHARACTERS = re.compile(r"[?*\[]")
_ESCAPES = re.compile(r"\\(.)")
# files in a checkpoint directory that are never a checkpoint themselves
_NOT_CHECKPOINTS = re.compile(r"(\.meta|\.data-\d{5}-of-\d{5}|\.tempstate\d+)$")


def resolve(path):
    """``("v2", prefix)`` or ``("v1", file)`` for a user-supplied path; CheckpointError if there is none."""
    path = storage.path(path)
    try:
        return _from_directory(path) if path.is_dir() else _checkpoint(path)
    except OSError as error:  # a name too long, a part that is not a directory, no permission...
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None


def _checkpoint(path):
    """What ``resolve`` finds for a path that is not a directory (a state file's target is never one)."""
    text = str(path)
    if text.endswith(_bundle.INDEX_SUFFIX):
        return _prefix(storage.path(text[: -len(_bundle.INDEX_SUFFIX)]), path)
    if _DATA_SUFFIX.search(text) and not has_table_magic(path):
        return _prefix(storage.path(_DATA_SUFFIX.sub("", text)), path)
    if _bundle.index_filename(path).is_file():
        return "v2", path
    if path.is_file():
        if has_table_magic(path):
            return "v1", _v1_pattern(path)
        raise CheckpointError(
            f"{path}: not a TensorFlow checkpoint (no table footer); "
            "pass the checkpoint prefix, its .index file or a V1 checkpoint file"
        )
    if _GLOB_CHARACTERS.search(path.name) and _shards(path):
        return "v1", path
    raise CheckpointError(f"{path}: no such checkpoint (neither a file nor a prefix with a {path.name}.index file)")


def _v1_pattern(path):
    """One shard of a sharded V1 checkpoint means all of them: ``x-00001-of-00002`` -> ``x-?????-of-00002``."""
    return path.with_name(_V1_SHARD.sub(_V1_SHARD_WILDCARD + r"\1", path.name))


def _shards(pattern):
    return [p for p in pattern.parent.glob(pattern.name) if has_table_magic(p)]


def _exists(target):
    return _bundle.index_filename(target).is_file() or target.is_file() or bool(_shards(target))


def _prefix(prefix, given):
    index = _bundle.index_filename(prefix)
    if not index.is_file():
        raise CheckpointError(f"{given}: the index file {index} is missing; copy it next to the data files")
    return "v2", prefix


def _from_directory(directory):
    state = directory / STATE_FILENAME
    if state.is_file():
        return _checkpoint(_from_state_file(state))
    found = sorted(
        {storage.path(str(p)[: -len(_bundle.INDEX_SUFFIX)]) for p in directory.glob("*" + _bundle.INDEX_SUFFIX)}
        | {_v1_pattern(p) for p in directory.iterdir() if _is_v1_candidate(p)}
    )
    if not found:
        raise CheckpointError(
            f"{directory}: a directory with no checkpoint in it (no *.index file, V1 file or checkpoint state file)"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise CheckpointError(f"{directory}: holds {len(found)} checkpoints ({names}); pass one of them")
    return resolve(found[0])


def _from_state_file(state):
    if storage.is_url(state):
        text = state.read_range(0, STATE_FILE_LIMIT + 1)
    else:
        with open(state, "rb") as file:
            text = file.read(STATE_FILE_LIMIT + 1)
    if len(text) > STATE_FILE_LIMIT:
        raise CheckpointError(f"{state}: larger than a checkpoint state file ({STATE_FILE_LIMIT} bytes at most); "
                              "pass the checkpoint prefix instead")
    match = _STATE_PATH.search(text.decode("utf-8", "replace"))
    if match is None:
        raise CheckpointError(f"{state}: no model_checkpoint_path line; pass the checkpoint prefix instead")
    target = _state_target(_ESCAPES.sub(r"\1", match.group(1)), state)
    inside = _inside(target, state.parent)
    if inside and _exists(target):
        return target
    # an absolute path from the machine that trained the model: look beside the state file
    local = state.parent / target.name
    if target.name not in ("", ".", "..") and _exists(local):
        return local
    if _exists(target):
        # outputs go beside the checkpoint: one outside the directory given would put them elsewhere too
        raise CheckpointError(f"{state}: names {target}, outside {state.parent}; pass that checkpoint's prefix instead")
    raise CheckpointError(f"{state}: names {target}, which does not exist; pass the checkpoint prefix instead")


def _state_target(text, state):
    """The checkpoint a state file's path names: relative to the state file's folder unless absolute."""
    if storage.is_url(text):
        return storage.path(text)
    if storage.is_url(state):
        # a path on the machine that trained the model names no object; its last part may lie beside
        return state.parent / text if not pathlib.PurePath(text).is_absolute() else storage.path(text)
    target = pathlib.Path(text)
    return target if target.is_absolute() else state.parent / target


def _inside(target, directory):
    """Whether checkpoint prefix ``target`` lies in ``directory`` (its files are ``directory``'s), links resolved."""
    if storage.is_url(directory):
        return storage.is_url(target) and target.parent.is_relative_to(directory)
    return pathlib.Path(os.path.realpath(target)).parent.is_relative_to(os.path.realpath(directory))


def _is_v1_candidate(path):
    return (
        path.is_file()
        and not _NOT_CHECKPOINTS.search(path.name)
        and not path.name.endswith(_bundle.INDEX_SUFFIX)
        and has_table_magic(path)
    )
