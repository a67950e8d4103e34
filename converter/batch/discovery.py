"""Finding a batch's models: checkpoints under directories and bucket prefixes, manifests, single checkpoints.

A model's id is its checkpoint's path relative to its source (prefixed with the source's name where
several are given); it names the model's folder in OUTDIR, so ids must be unique, must not nest, and
must stay clear of the files the batch writes itself.
"""

import contextlib
import dataclasses
import fnmatch
import os
import pathlib
import re

from converter import storage
from converter.batch.records import Model
from converter.checkpoint import _paths
from converter.convert import DEFAULT_SUFFIXES
from converter.errors import CheckpointError, ConvertError
from converter.options import Options

STATE_FILENAME = "state.json"
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
LOCK_FILENAME = ".batch.lock"
# the temporary files of converter._atomic: ".<name>.<random>.partial" beside the output
PARTIAL_GLOB = ".*.partial"
# files the batch writes in OUTDIR and in each model's folder: no model id may name one
RESERVED_NAMES = (STATE_FILENAME, REPORT_JSON, REPORT_MARKDOWN, LOCK_FILENAME)
# a model folder's name leaves room for its outputs' suffixes and temporary names in 255 bytes
MAX_ID_PART_BYTES = 200
MANIFEST_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}

# "model.ckpt-1234" is step 1234 of the training run "model.ckpt" (a V1 shard pattern stripped first)
_STEP = re.compile(r"^(?P<stem>.+)-(?P<step>\d+)$")
_V1_SHARDS = re.compile(r"-\?{5}-of-\d{5}$")
_DATA_PART = re.compile(r"\.data-\d{5}-of-\d{5}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@,-]")
_TARGET_SEPARATORS = re.compile(r"[,;\s]+")


def parse_targets(targets):
    """A tuple of target names from ``"torch,onnx"`` or a list; ConvertError naming an unknown one."""
    if isinstance(targets, str):
        targets = [t for t in _TARGET_SEPARATORS.split(targets) if t]
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        raise ConvertError(f"targets must be names ({', '.join(DEFAULT_SUFFIXES)}), got {targets!r:.60}")
    targets = tuple(dict.fromkeys(targets))
    unknown = [t for t in targets if t not in DEFAULT_SUFFIXES]
    if unknown or not targets:
        known = ", ".join(DEFAULT_SUFFIXES)
        raise ConvertError(f"unknown target {', '.join(unknown) or '(none)'}; choose from {known}")
    return targets


def safe_id(text):
    """A model id from a relative path: its parts, with characters unsafe in a folder name replaced."""
    parts = [_UNSAFE.sub("_", part) for part in pathlib.PurePath(text).parts if part not in ("/", ".", "..")]
    return "/".join(parts)


def discover(sources, *, targets=("torch",), options=None, all_steps=False, exclude=()):
    """The models of a batch, sorted by id.

    Args:
        sources: directories (searched recursively), ``.yaml``/``.csv`` manifests, or checkpoints.
        targets, options: the defaults for every model (an ``Options``; a manifest row may set its own).
        all_steps: every step of a training run, not only its latest.
        exclude: directories not to search (the batch's own output).

    Returns:
        a list of ``Model``; ConvertError for a source that does not exist, a bad manifest or colliding ids.
    """
    from converter.batch.manifests import read_manifest

    options = options if options is not None else Options()
    targets = parse_targets(targets)
    sources = [storage.path(source) for source in sources]
    excluded = {storage.path(path).resolve() for path in exclude}
    labels = _labels(sources) if len(sources) > 1 else [None]
    models = []
    for source, label in zip(sources, labels):
        if source.is_file() and source.suffix.lower() in MANIFEST_FORMATS:
            found = read_manifest(source, targets=targets, options=options)
        elif source.is_dir():
            found = [Model(safe_id(rel), path, targets, options, error)
                     for rel, path, error in _search(source, all_steps, excluded)]
        else:
            try:
                _, path = _paths.resolve(source)
            except CheckpointError:
                raise ConvertError(
                    f"{source}: no such directory, manifest or checkpoint; "
                    "pass directories of checkpoints or .yaml/.csv manifests"
                ) from None
            # named after the checkpoint, not the file given (model.ckpt.index, a data shard...)
            found = [Model(safe_id(storage.path(path).name), storage.absolute(path), targets, options)]
        models += [dataclasses.replace(m, id=f"{label}/{m.id}") if label else m for m in found]
    _check_unique(models)
    return sorted(models, key=lambda m: m.id)


def _labels(sources):
    # several sources: each model id starts with its source's name, made unique
    labels, seen = [], {}
    for source in sources:
        name = safe_id(source.stem if source.is_file() else source.resolve().name) or "source"
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return labels


def _id_problem(model_id):
    """Why ``model_id`` cannot name a folder of OUTDIR, or None: it must stay clear of the batch's own files."""
    parts = model_id.split("/")
    if not model_id or any(not part for part in parts):
        return "is empty"
    if any(part in RESERVED_NAMES or fnmatch.fnmatch(part, PARTIAL_GLOB) for part in parts):
        return f"has a part named as a file the batch writes ({', '.join(RESERVED_NAMES)}, {PARTIAL_GLOB})"
    if any(len(part.encode()) > MAX_ID_PART_BYTES for part in parts):
        return f"has a part longer than {MAX_ID_PART_BYTES} bytes (outputs and temporary names must fit beside it)"
    return None


def _check_unique(models):
    seen, checkpoints = {}, set()
    for model in models:
        problem = _id_problem(model.id)
        if problem:
            raise ConvertError(f"{model.checkpoint}: its model id {model.id!r} {problem}; give it another id in a "
                               "manifest")
        if model.checkpoint in checkpoints:
            raise ConvertError(f"{model.checkpoint} is given twice (its .index and data files, or nested sources); "
                               "give it once")
        checkpoints.add(model.checkpoint)
        if model.id in seen:
            raise ConvertError(
                f"{model.checkpoint} and {seen[model.id]} would both be written to {model.id}/; "
                "give one an id in its manifest"
            )
        seen[model.id] = model.checkpoint
    for model in models:
        # a folder inside another model's folder could take the name of that model's output or state
        parents = ["/".join(model.id.split("/")[:n]) for n in range(1, model.id.count("/") + 1)]
        outer = next((seen[parent] for parent in parents if parent in seen), None)
        if outer is not None:
            raise ConvertError(f"{model.checkpoint} would be written inside the folder of {outer} ({model.id}/); "
                               "give one an id in a manifest")


def _search(root, all_steps, excluded):
    """(id, checkpoint, error) for every checkpoint under ``root``."""
    for directory, files in _directories(root, excluded):
        found, broken = _checkpoints_in(directory, files)
        chosen = found if all_steps else _latest_steps(directory, found)
        for path in chosen:
            yield path.relative_to(root).as_posix(), storage.absolute(path), ""
        for path, error in broken:
            yield path.relative_to(root).as_posix(), storage.absolute(path), error


def _directories(root, excluded):
    """(directory, sorted file names) of every directory under ``root`` (a bucket prefix: one listing)."""
    if storage.is_url(root):
        yield from storage.walk(root, excluded)
        return
    for directory, subdirs, files in os.walk(root):
        directory = pathlib.Path(directory)
        subdirs[:] = sorted(d for d in subdirs if (directory / d).resolve() not in excluded)
        yield directory, sorted(files)


def _checkpoints_in(directory, files):
    found, broken = set(), []
    for name in files:
        try:
            _, resolved = _paths.resolve(directory / name)
        except CheckpointError as error:
            # a data shard without its index is a checkpoint, broken; any other file is not one
            if _DATA_PART.search(name):
                broken.append((directory / name, str(error)))
            continue
        found.add(storage.path(resolved))
    return sorted(found), broken


def _latest_steps(directory, found):
    """Of each training run's steps, the one its ``checkpoint`` state file names, else the highest."""
    runs = {}
    for path in found:
        match = _STEP.match(_V1_SHARDS.sub("", path.name))
        run = match["stem"] if match else path.name
        runs.setdefault(run, []).append((int(match["step"]) if match else -1, path))
    latest = None
    if (directory / _paths.STATE_FILENAME).is_file():
        with contextlib.suppress(CheckpointError):
            latest = storage.path(_paths.resolve(directory)[1]).resolve()
    chosen = []
    for steps in runs.values():
        named = [path for _, path in steps if path.resolve() == latest]
        chosen.append(named[0] if named else max(steps)[1])
    return sorted(chosen)
