"""Manifests: YAML or CSV files listing a batch's checkpoints, each row with its own options.

A row has ``path`` (relative to the manifest's folder, or a bucket URL) and may set ``id``,
``targets`` and any ``converter.options.Options`` field by its name (``arch``, ``ema``,
``include_top``, ``strict``...; ``architecture`` and ``lenient`` are read as ``arch`` and
``strict`` inverted). A field no option has is refused, naming the manifest, the row and the field.
"""

import contextlib
import csv
import os
import pathlib

from converter import _yaml, storage
from converter.batch.discovery import MANIFEST_FORMATS, parse_targets, safe_id
from converter.batch.records import Model
from converter.checkpoint import _paths
from converter.errors import CheckpointError, ConvertError
from converter.options import MANIFEST_FIELDS, Options

# the fields of a row that are not options
ROW_FIELDS = ("path", "id", "targets")


def read_manifest(path, *, targets=("torch",), options=None):
    """The models a manifest lists: a YAML list (or ``models:`` list) of rows, or a CSV file with a header.

    ``targets`` and ``options`` (an ``Options``) are the defaults a row may override.
    Returns a list of ``Model``; ConvertError naming the manifest and row for a malformed one.
    """
    path = storage.path(path)
    defaults = options if options is not None else Options()
    models = []
    for where, row in _manifest_rows(path):
        unknown = sorted(set(row) - set(MANIFEST_FIELDS))
        if unknown:
            raise ConvertError(f"{where}: unknown field {', '.join(unknown)}; known: {', '.join(MANIFEST_FIELDS)}")
        if not row.get("path"):
            raise ConvertError(f"{where}: no path; every row names a checkpoint")
        for name in ("path", "id"):
            if isinstance(row.get(name), (dict, list, set)):
                raise ConvertError(f"{where}: {name} is {type(row[name]).__name__}, where a single value belongs")
        chosen = Options.from_manifest({k: v for k, v in row.items() if k not in ROW_FIELDS}, where=where,
                                       base=defaults, folder=path.parent)
        checkpoint = storage.path(row["path"]) if storage.is_url(str(row["path"])) else path.parent / str(row["path"])
        try:
            row_targets = parse_targets(row["targets"]) if row.get("targets") else tuple(targets)
        except ConvertError as error:
            raise ConvertError(f"{where}: {error}") from None
        model_id = str(row.get("id") or _manifest_id(checkpoint, path.parent))
        try:
            _, resolved = _paths.resolve(checkpoint)
            models.append(Model(safe_id(model_id), storage.absolute(resolved), row_targets, chosen))
        except CheckpointError as error:
            models.append(Model(safe_id(model_id), storage.absolute(checkpoint), row_targets, chosen, str(error)))
    return models


def _manifest_rows(path):
    if MANIFEST_FORMATS[path.suffix.lower()] == "csv":
        return _csv_rows(path, _yaml.read_text(path, "manifest"))
    data = _yaml.load(path, "manifest")
    if isinstance(data, dict) and set(data) == {"models"}:
        data = data["models"]
    if not isinstance(data, list):
        raise ConvertError(f"{path}: a YAML manifest is a list of models (or a 'models:' list)")
    rows = []
    for number, item in enumerate(data, start=1):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise ConvertError(f"{path}, model {number}: a path or a mapping with a path")
        rows.append((f"{path}, model {number}", item))
    return rows


def _csv_rows(path, text):
    try:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ConvertError(f"{path}: a CSV manifest starts with a header line naming a path column")
        return [(f"{path}, line {number}", {k.strip(): (v or "").strip() for k, v in row.items() if k})
                for number, row in enumerate(reader, start=2)]
    except csv.Error as error:  # a NUL byte, a field over csv's size limit...
        raise ConvertError(f"{path}: not a readable CSV manifest ({error})") from None


def _manifest_id(checkpoint, folder):
    if storage.is_url(checkpoint):
        return checkpoint.relative_to(folder).as_posix() if checkpoint.is_relative_to(folder) else checkpoint.key
    checkpoint = pathlib.Path(os.path.abspath(checkpoint))
    with contextlib.suppress(ValueError):
        return checkpoint.relative_to(os.path.abspath(folder)).as_posix()
    return checkpoint.as_posix()
