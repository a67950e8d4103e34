"""Batch migration: many checkpoints to many targets, in parallel, resumable, with one report.

``run_batch`` finds checkpoints (directories searched recursively, and manifests), converts each to
each target in worker processes or Ray tasks, optionally verifies the outputs, and writes
``OUTDIR/report.json`` and ``OUTDIR/report.md``. Model ``<id>`` (its checkpoint's path relative to
its source) gets the folder ``OUTDIR/<id>/``: its outputs and ``state.json``, which records per
target a key over everything the output depends on (the checkpoint's bytes, the mapping table, the
options, the tool version). A rerun skips a target whose key and output file are unchanged and
redoes the rest; every file is written atomically, so an interrupted batch resumes cleanly.
"""

import concurrent.futures
import contextlib
import csv
import ctypes
import dataclasses
import fcntl
import fnmatch
import glob
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import signal
import time
import traceback

from converter import __version__, _warm, _yaml, input_size, storage
from converter import mapping as tables
from converter._atomic import atomic_output
from converter.checkpoint import _paths, open_checkpoint
from converter.convert import (DEFAULT_SUFFIXES, DTYPES, EMA_AUTO, TARGET_OPTIONS, TF2_FORMAT, convert, default_output,
                               table_for)
from converter.errors import CheckpointError, ConvertError
from converter.metagraph import recover

STATE_FILENAME = "state.json"
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
LOCK_FILENAME = ".batch.lock"
# the temporary files of converter._atomic: ".<name>.<random>.partial" beside the output
PARTIAL_GLOB = ".*.partial"
EXECUTORS = ("process", "ray")
# TensorFlow and torch hold threads and locks that a forked child would inherit in a broken state
START_METHOD = "spawn"
HASH_CHUNK = 1 << 20
DIGEST_SIZE = 16
# per-model options and their defaults (the keyword arguments of ``convert``)
DEFAULT_OPTIONS = {"arch": None, "mapping": None, "scope": None, "ema": False, "background": tables.BACKGROUND_AUTO,
                   "aux": None, "input_size": None, "strict": True}
# the options that go to a target's writer (``convert.TARGET_OPTIONS``), not to every target
WRITER_OPTIONS = ("include_top", "opset", "input_layout", "outputs")
# options ``verify`` takes besides the port files (``strict`` is the converter's business)
VERIFY_OPTIONS = ("arch", "mapping", "scope", "ema", "background", "aux", "input_size")
MANIFEST_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}
MANIFEST_FIELDS = ("path", "id", "architecture", "mapping", "scope", "ema", "background", "aux", "input_size",
                   "lenient", "targets", "include_top", "dtype", "opset")
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
# statuses of a target and of a model
OK, UP_TO_DATE, FAILED, PARTIAL, PENDING = "ok", "up to date", "failed", "partial", "pending"
# files the batch writes in OUTDIR and in each model's folder: no model id may name one
RESERVED_NAMES = (STATE_FILENAME, REPORT_JSON, REPORT_MARKDOWN, LOCK_FILENAME)
# a model folder's name leaves room for its outputs' suffixes and temporary names in 255 bytes
MAX_ID_PART_BYTES = 200
# the exit status of a batch in which any model failed
EXIT_FAILED = 1
WORKER_DIED = "the worker process died (out of memory or a crash); rerun the batch to retry this model"
# Linux prctl option: a signal for this process when its parent dies
PR_SET_PDEATHSIG = 1
# how a worker exits when stopped by SIGTERM
EXIT_STOPPED = 3

# "model.ckpt-1234" is step 1234 of the training run "model.ckpt" (a V1 shard pattern stripped first)
_STEP = re.compile(r"^(?P<stem>.+)-(?P<step>\d+)$")
_V1_SHARDS = re.compile(r"-\?{5}-of-\d{5}$")
_DATA_PART = re.compile(r"\.data-\d{5}-of-\d{5}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=@,-]")
_TARGET_SEPARATORS = re.compile(r"[,;\s]+")


@dataclasses.dataclass
class Model:
    """One checkpoint of a batch: its id (its folder in OUTDIR), where it is and how to convert it."""

    id: str
    checkpoint: str
    targets: tuple
    options: dict
    error: str = ""  # why it cannot be converted, found while looking for it


@dataclasses.dataclass
class Job:
    """What a worker needs for one model."""

    model: Model
    outdir: str
    verify: bool = False
    force: bool = False
    device: str = "auto"


@dataclasses.dataclass
class BatchReport:
    """One record per model (a dict, as in ``report.json``), in id order."""

    outdir: pathlib.Path
    targets: tuple
    models: list
    seconds: float

    @property
    def ok(self):
        return all(record["status"] in (OK, UP_TO_DATE) for record in self.models)

    def counts(self):
        """Status -> number of models."""
        counts = {}
        for record in self.models:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def summary(self):
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items()))
        many = "s" if len(self.models) != 1 else ""
        return f"{len(self.models)} model{many} to {', '.join(self.targets)}: {counts or 'none'}; {self.seconds:.1f} s"

    def to_dict(self):
        return {
            "ok": self.ok,
            "version": __version__,
            "outdir": str(self.outdir),
            "targets": list(self.targets),
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "models": self.models,
        }

    def markdown(self):
        """A Markdown table: model, architecture, targets, status, max error, time, reason."""
        lines = [
            "# ckpt-convert batch report",
            "",
            f"{self.summary()} (ckpt-convert {__version__})",
            "",
            "| model | architecture | scope | classes | heads | input | skipped | targets | status | max error "
            "| time | reason |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for record in self.models:
            targets = ", ".join(f"{t} {entry['status']}" for t, entry in record["targets"].items())
            error = f"{record['max_error']:.2e}" if record["max_error"] is not None else "-"
            cells = [f"`{record['id']}`", record["architecture"] or "-", *_decision_cells(record), targets,
                     record["status"], error, f"{record['seconds']:.1f} s", record["reason"]]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(lines) + "\n"


def _decision_cells(record):
    # scope, classes (and the background rule), heads, input size, skipped variables
    decided = record.get("decisions")
    if not decided:
        return ["-"] * 5
    background = decided["background"]
    classes = "-" if background["classes"] is None else f"{background['port_classes']} ({background['rule']})"
    heads = ", ".join(f"{group} {status}" for group, status in decided["heads"].items()) or "-"
    skipped = ", ".join(f"{count} {reason}" for reason, count in record.get("skipped", {}).items()) or "-"
    return [f"`{decided['scope']}`", classes, heads, "x".join(map(str, decided["input_size"])), skipped]


# ---------------------------------------------------------------------------- finding the models


def discover(sources, *, targets=("torch",), options=None, all_steps=False, exclude=()):
    """The models of a batch, sorted by id.

    Args:
        sources: directories (searched recursively), ``.yaml``/``.csv`` manifests, or checkpoints.
        targets, options: the defaults for every model (a manifest row may set its own).
        all_steps: every step of a training run, not only its latest.
        exclude: directories not to search (the batch's own output).

    Returns:
        a list of ``Model``; ConvertError for a source that does not exist, a bad manifest or colliding ids.
    """
    options = {**DEFAULT_OPTIONS, **(options or {})}
    targets = _parse_targets(targets)
    sources = [storage.path(source) for source in sources]
    excluded = {storage.path(path).resolve() for path in exclude}
    labels = _labels(sources) if len(sources) > 1 else [None]
    models = []
    for source, label in zip(sources, labels):
        if source.is_file() and source.suffix.lower() in MANIFEST_FORMATS:
            found = read_manifest(source, targets=targets, options=options)
        elif source.is_dir():
            found = [Model(_safe_id(rel), path, targets, dict(options), error)
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
            found = [Model(_safe_id(storage.path(path).name), storage.absolute(path), targets, dict(options))]
        models += [dataclasses.replace(m, id=f"{label}/{m.id}") if label else m for m in found]
    _check_unique(models)
    return sorted(models, key=lambda m: m.id)


def _labels(sources):
    # several sources: each model id starts with its source's name, made unique
    labels, seen = [], {}
    for source in sources:
        name = _safe_id(source.stem if source.is_file() else source.resolve().name) or "source"
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return labels


def _safe_id(text):
    parts = [_UNSAFE.sub("_", part) for part in pathlib.PurePath(text).parts if part not in ("/", ".", "..")]
    return "/".join(parts)


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


def _parse_targets(targets):
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


def read_manifest(path, *, targets=("torch",), options=None):
    """The models a manifest lists: a YAML list (or ``models:`` list) of rows, or a CSV file with a header.

    A row has ``path`` (relative to the manifest's folder) and may set ``id``, ``architecture``,
    ``mapping``, ``scope``, ``ema``, ``background`` (auto, keep or drop), ``aux`` (true: keep the
    auxiliary head where the checkpoint has it; false: leave it out), ``input_size`` (``224`` or
    ``224x192``), ``lenient`` and ``targets`` (``torch;onnx`` in CSV).
    Returns a list of ``Model``; ConvertError naming the manifest and row for a malformed one.
    """
    path = storage.path(path)
    defaults = {**DEFAULT_OPTIONS, **(options or {})}
    models = []
    for where, row in _manifest_rows(path):
        unknown = sorted(set(row) - set(MANIFEST_FIELDS))
        if unknown:
            raise ConvertError(f"{where}: unknown field {', '.join(unknown)}; known: {', '.join(MANIFEST_FIELDS)}")
        if not row.get("path"):
            raise ConvertError(f"{where}: no path; every row names a checkpoint")
        _check_row_values(where, row)
        checkpoint = storage.path(row["path"]) if storage.is_url(str(row["path"])) else path.parent / str(row["path"])
        options = dict(defaults)
        if row.get("ema") not in (None, ""):
            options["ema"] = EMA_AUTO if str(row["ema"]).strip().lower() == EMA_AUTO else \
                _boolean(row["ema"], f"{where}: ema")
        if row.get("include_top") not in (None, ""):
            options["include_top"] = None if _boolean(row["include_top"], f"{where}: include_top") else False
        if row.get("dtype") not in (None, ""):
            if str(row["dtype"]) not in DTYPES:
                raise ConvertError(f"{where}: dtype is {row['dtype']!r}; use {', '.join(DTYPES)}")
            options["dtype"] = str(row["dtype"])
        if row.get("opset") not in (None, ""):
            try:
                options["opset"] = int(row["opset"])
            except ValueError:
                raise ConvertError(f"{where}: opset is {row['opset']!r}; use a number") from None
        if row.get("lenient") not in (None, ""):
            options["strict"] = not _boolean(row["lenient"], f"{where}: lenient")
        if row.get("aux") not in (None, ""):
            options["aux"] = None if _boolean(row["aux"], f"{where}: aux") else False
        if row.get("background") not in (None, ""):
            if str(row["background"]) not in tables.BACKGROUND_RULES:
                raise ConvertError(f"{where}: background is {row['background']!r}; use "
                                   f"{', '.join(tables.BACKGROUND_RULES)}")
            options["background"] = str(row["background"])
        if row.get("scope"):
            options["scope"] = str(row["scope"])
        if row.get("input_size") not in (None, ""):
            try:
                options["input_size"] = input_size.parse(row["input_size"])
            except ValueError as error:
                raise ConvertError(f"{where}: {error}") from None
        if row.get("architecture"):
            options["arch"] = str(row["architecture"])
        if row.get("mapping"):
            options["mapping"] = os.path.abspath(path.parent / str(row["mapping"]))
        try:
            row_targets = _parse_targets(row["targets"]) if row.get("targets") else tuple(targets)
        except ConvertError as error:
            raise ConvertError(f"{where}: {error}") from None
        model_id = str(row.get("id") or _manifest_id(checkpoint, path.parent))
        try:
            _, resolved = _paths.resolve(checkpoint)
            models.append(Model(_safe_id(model_id), storage.absolute(resolved), row_targets, options))
        except CheckpointError as error:
            models.append(Model(_safe_id(model_id), storage.absolute(checkpoint), row_targets, options, str(error)))
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


def _check_row_values(where, row):
    # one scalar per field (a list of names for targets): a mapping or a list elsewhere is a mistake
    for name, value in row.items():
        if name != "targets" and isinstance(value, (dict, list, set)):
            raise ConvertError(f"{where}: {name} is {type(value).__name__}, where a single value belongs")


def _csv_rows(path, text):
    try:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ConvertError(f"{path}: a CSV manifest starts with a header line naming a path column")
        return [(f"{path}, line {number}", {k.strip(): (v or "").strip() for k, v in row.items() if k})
                for number, row in enumerate(reader, start=2)]
    except csv.Error as error:  # a NUL byte, a field over csv's size limit...
        raise ConvertError(f"{path}: not a readable CSV manifest ({error})") from None


def _boolean(value, where):
    if isinstance(value, bool):
        return value
    try:
        return BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ConvertError(f"{where} is {value!r}; use true or false") from None


def _manifest_id(checkpoint, folder):
    if storage.is_url(checkpoint):
        return checkpoint.relative_to(folder).as_posix() if checkpoint.is_relative_to(folder) else checkpoint.key
    checkpoint = pathlib.Path(os.path.abspath(checkpoint))
    with contextlib.suppress(ValueError):
        return checkpoint.relative_to(os.path.abspath(folder)).as_posix()
    return checkpoint.as_posix()


# ---------------------------------------------------------------------------- keys and state


def checkpoint_files(checkpoint):
    """The files holding a checkpoint's bytes: V2 index and data shards, or the V1 file (or its shards)."""
    kind, path = _paths.resolve(checkpoint)
    path = storage.path(path)
    if kind == "v2":
        return [storage.path(f"{path}.index"), *sorted(path.parent.glob(glob.escape(path.name) + ".data-*"))]
    return sorted(path.parent.glob(path.name)) if glob.has_magic(path.name) else [path]


def _file_digest(path):
    """blake2b of a file's bytes, read in chunks; for an object, the digest its store keeps of its bytes."""
    stored = path.content_digest() if storage.is_url(path) else None
    if stored is not None:
        return stored
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    with (path.open("rb") if storage.is_url(path) else open(path, "rb")) as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files, cache):
    """One digest over ``files``' bytes, and the cache entries for them.

    ``cache`` maps a path to ``{"size", "mtime_ns", "digest"}``; a file whose size and mtime match its
    entry is not read again. Returns ``(digest, entries)``, the entries of exactly ``files``.
    """
    whole = hashlib.blake2b(digest_size=DIGEST_SIZE)
    entries = {}
    for path in files:
        stat = storage.path(path).stat()
        entry = cache.get(str(path))
        if not entry or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": _file_digest(path)}
        entries[str(path)] = entry
        whole.update(f"{storage.path(path).name}\0{entry['digest']}\0".encode())
    return whole.hexdigest(), entries


def _unchanged(files, cache):
    if sorted(map(str, files)) != sorted(cache):
        return False
    for path in files:
        stat = path.stat()
        if (cache[str(path)]["size"], cache[str(path)]["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            return False
    return True


def _target_key(content, mapping_digest, target, output, options):
    """The key of one output: everything that decides its bytes."""
    text = json.dumps({"version": __version__, "checkpoint": content, "mapping": mapping_digest,
                       "target": target, "output": output, "options": options}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_SIZE).hexdigest()


def _output_name(model_id, target):
    """``<name>.<suffix>`` of a model's output: named as ``convert`` names one beside its checkpoint."""
    return default_output(pathlib.PurePosixPath(model_id).name, target).name


def _read_state(folder):
    try:
        return json.loads((folder / STATE_FILENAME).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path, data):
    with atomic_output(path, force=True) as temp:
        temp.write_text(json.dumps(data, indent=2) + "\n")


def _output_current(entry, key, folder):
    """The state's entry says this key's output was written, and the file is still the one written."""
    if entry.get("status") != OK or entry.get("key") != key:
        return False
    try:
        stat = (folder / entry["output"]).stat()
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (entry["size"], entry["mtime_ns"])


def _table_for(model):
    options = model.options
    if options["mapping"] or options["arch"]:
        return table_for([], options["arch"], options["mapping"])
    with open_checkpoint(model.checkpoint) as ckpt:
        # a TF2 checkpoint, or one no table fits and no .meta graph describes: convert says which, per target
        if ckpt.format == TF2_FORMAT or not (tables.networks(ckpt.names()) or recover.meta_beside(ckpt.path)):
            return None
        return table_for(ckpt.names(), scope=options["scope"], checkpoint=ckpt.path)


# ---------------------------------------------------------------------------- one model


def _record(model, architecture=None):
    return {"id": model.id, "checkpoint": model.checkpoint, "architecture": architecture, "status": FAILED,
            "seconds": 0.0, "max_error": None, "reason": "", "decisions": None, "skipped": {}, "targets": {}}


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _failed_record(model, reason, seconds=0.0):
    """The report record of a model none of whose targets could be done, for ``reason``."""
    reason = _one_line(reason)
    record = _record(model)
    record["targets"] = {t: {"status": FAILED, "output": None, "max_error": None, "seconds": 0.0, "reason": reason}
                         for t in model.targets}
    record.update(reason=reason, seconds=round(seconds, 3))
    return record


def _finish(record, seconds):
    entries = record["targets"]
    statuses = {entry["status"] for entry in entries.values()}
    failed = {t: entry["reason"] for t, entry in entries.items() if entry["status"] == FAILED}
    if statuses == {UP_TO_DATE}:
        record["status"] = UP_TO_DATE
    elif not failed:
        record["status"] = OK
    else:
        record["status"] = FAILED if len(failed) == len(entries) else PARTIAL
    reasons = set(failed.values())
    record["reason"] = reasons.pop() if len(failed) > 1 and len(reasons) == 1 else "; ".join(
        f"{t}: {reason}" for t, reason in failed.items())
    errors = [entry["max_error"] for entry in entries.values() if entry.get("max_error") is not None]
    record["max_error"] = max(errors) if errors else None
    # what was read from the checkpoint is the same for every target: the first written one says it
    decided = [entry for entry in entries.values() if entry.get("decisions")]
    record["decisions"] = decided[0]["decisions"] if decided else None
    record["skipped"] = decided[0]["skipped"] if decided else {}
    record["seconds"] = round(seconds, 3)
    return record


def _report_entry(model_id, entry, status, seconds=0.0):
    output = f"{model_id}/{entry['output']}" if entry.get("output") and entry.get("status") == OK else None
    return {"status": status, "output": output, "max_error": entry.get("max_error"),
            "seconds": round(seconds, 3), "reason": entry.get("reason", ""),
            "decisions": entry.get("decisions"), "skipped": entry.get("skipped", {}), "notes": entry.get("notes", []),
            "bytes_read": entry.get("bytes_read") if status != UP_TO_DATE else 0}


def _current_record(job):
    """The report record of a model whose every output is up to date, from its state alone; else None.

    Reads no checkpoint bytes: the files' sizes and mtimes must match the state's, and the mapping
    table's digest, the options and the version must give the recorded keys.
    """
    model = job.model
    folder = storage.path(job.outdir) / model.id
    state = _read_state(folder)
    if model.error or state.get("version") != __version__:
        return None
    try:
        if not _unchanged(checkpoint_files(model.checkpoint), state["files"]):
            return None
        table = state["mapping"]["path"]
        if (_file_digest(table) if table else "") != state["mapping"]["digest"]:
            return None
    except (ConvertError, OSError, KeyError):
        return None
    record = _record(model, state.get("architecture"))
    for target in model.targets:
        entry = state["targets"].get(target, {})
        name = _output_name(model.id, target)
        key = _target_key(state["content"], state["mapping"]["digest"], target, name, model.options)
        if not _output_current(entry, key, folder) or (job.verify and entry.get("verified") is not True):
            return None
        record["targets"][target] = _report_entry(model.id, entry, UP_TO_DATE)
    return _finish(record, 0.0)


def _process_model(job):
    """Convert (and verify) one model's targets that are not up to date; returns its report record.

    Runs in a worker. Every failure is recorded with its reason, never raised.
    """
    started = time.perf_counter()
    model = job.model
    if model.error:
        return _failed_record(model, model.error)
    folder = storage.path(job.outdir) / model.id
    try:
        _make_folder(folder, job.outdir)
        state = _read_state(folder)
        content, files = content_hash(checkpoint_files(model.checkpoint), state.get("files", {}))
        table = _table_for(model)
        mapping = {"path": str(table.path) if table else None, "digest": _file_digest(table.path) if table else ""}
    except ConvertError as error:
        return _failed_record(model, _one_line(error), time.perf_counter() - started)
    except Exception as error:  # a bug must not stop the batch: the model fails with the reason
        return _failed_record(model, f"unexpected {type(error).__name__}: {_one_line(error)}",
                             time.perf_counter() - started)
    previous = state.get("targets", {})
    state = {"version": __version__, "checkpoint": model.checkpoint, "architecture": table and table.architecture,
             "content": content, "files": files, "mapping": mapping, "targets": dict(previous)}
    record = _record(model, table and table.architecture)
    did = {}
    for target in model.targets:
        name = _output_name(model.id, target)
        key = _target_key(content, mapping["digest"], target, name, model.options)
        entry = previous.get(target, {})
        if _output_current(entry, key, folder):
            did[target] = (entry, 0.0, False)
            continue
        did[target] = _convert_target(job, folder, state, target, name, key, entry)
    if job.verify:
        _verify(job, folder, state, [t for t in model.targets if state["targets"].get(t, {}).get("status") == OK
                                     and state["targets"][t].get("verified") is not True], did)
    _write_json(folder / STATE_FILENAME, state)
    for target, (_, seconds, worked) in did.items():
        entry = state["targets"][target]
        status = entry["status"] if worked or entry["status"] == FAILED else UP_TO_DATE
        record["targets"][target] = _report_entry(model.id, entry, status, seconds)
    return _finish(record, time.perf_counter() - started)


def _make_folder(folder, outdir):
    """Create a model's folder, refusing one that a link in OUTDIR places outside it, before creating anything."""
    if storage.is_url(folder):
        return  # a bucket has neither folders to create nor links
    existing = folder
    while not os.path.lexists(existing):
        existing = existing.parent
    _check_inside(existing, folder, outdir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConvertError(f"{folder}: cannot create the model's folder ({error.strerror or error})") from None
    _check_inside(folder, folder, outdir)


def _check_inside(path, folder, outdir):
    if not pathlib.Path(os.path.realpath(path)).is_relative_to(os.path.realpath(outdir)):
        raise ConvertError(f"{folder}: a link leads it out of {outdir}; remove the link, outputs stay in OUTDIR")


def _convert_target(job, folder, state, target, name, key, previous):
    """Write one target; the state claims the output first, so a rerun may replace what this run wrote."""
    model, output = job.model, folder / name
    started = time.perf_counter()
    if output.exists() and previous.get("output") != name and not job.force:
        entry = {"status": FAILED, "key": key, "reason": f"{output}: exists and this batch did not write it; "
                                                           "pass --force to replace it"}
        state["targets"][target] = entry
        return entry, 0.0, True
    state["targets"][target] = {"status": PENDING, "key": key, "output": name}
    _write_json(folder / STATE_FILENAME, state)
    try:
        # a writer option of another target (an ONNX opset beside a torch output) is not this output's
        options = {key: value for key, value in model.options.items()
                   if key not in WRITER_OPTIONS or key in TARGET_OPTIONS[target]}
        result = convert(model.checkpoint, target, output, **options, force=True)
        stat = output.stat()
        entry = {"status": OK, "key": key, "output": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                 "bytes_read": result.bytes_read, "verified": None, "max_error": None, "decisions": result.plan.to_dict(),
                 "skipped": result.skipped_counts(), "notes": result.notes}
    except ConvertError as error:
        entry = {"status": FAILED, "key": key, "output": name, "reason": _one_line(error)}
    except Exception as error:  # a bug must not stop the batch: the target fails with the reason
        entry = {"status": FAILED, "key": key, "output": name,
                 "reason": f"unexpected {type(error).__name__}: {_one_line(error)}",
                 "detail": traceback.format_exc()}
    state["targets"][target] = entry
    return entry, time.perf_counter() - started, True


def _verify(job, folder, state, targets, did):
    """Run ``converter.verify`` once on the outputs of ``targets``; record the max error, fail the non-equivalent."""
    if not targets:
        return
    from converter.verify import verify

    started = time.perf_counter()
    model, options = job.model, job.model.options
    paths = {t: folder / state["targets"][t]["output"] for t in targets}
    try:
        # --ema auto: the ports record what was used
        given = {k: options[k] for k in VERIFY_OPTIONS if not (k == "ema" and options[k] == EMA_AUTO)}
        with storage.local_copies(model.checkpoint, list(paths.values())) as (checkpoint, ported):
            report = verify(checkpoint, ported, **given, device=job.device)
            labels = {backend.path: backend.name for backend in report.backends}
            labels = {str(remote): labels.get(str(local)) for remote, local in zip(paths.values(), ported)}
    except ConvertError as error:
        report, reason = None, f"verification failed: {_one_line(error)}"
    except Exception as error:  # a bug must not stop the batch: the targets fail with the reason
        report, reason = None, f"verification failed: unexpected {type(error).__name__}: {_one_line(error)}"
    share = (time.perf_counter() - started) / len(targets)
    labels = labels if report else {}
    for target, path in paths.items():
        entry = state["targets"][target]
        checks = [c for c in (report.checks if report else []) if c.backend == labels.get(str(path))]
        errors = [c.metrics["max_abs"] for c in checks if c.kind == "output" and "max_abs" in c.metrics]
        failures = [c for c in checks if not c.passed]
        entry["max_error"] = max(errors) if errors else None
        entry["verified"] = bool(checks) and not failures
        if report is not None and not entry["verified"]:
            first = failures[0] if failures else None
            reason = (f"not equivalent: {first.message or first.name} ({len(failures)} failed "
                      f"check{'s' if len(failures) != 1 else ''})" if first
                      else "verify ran no check on it")
        if not entry["verified"]:
            entry.update(status=FAILED, reason=reason)
        _, seconds, _ = did[target]
        did[target] = (entry, seconds + share, True)


# ---------------------------------------------------------------------------- executors


_busy = False


class _Stopped(BaseException):
    """SIGTERM: the batch is stopping or gone; unwind (removing any partial file), then exit."""


def _on_terminate(signum, frame):
    if _busy:
        raise _Stopped()
    os._exit(EXIT_STOPPED)


def _worker_init(parent, threads=None):
    # Ctrl-C reaches every process of the terminal; the batch alone decides, and stops its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_terminate)
    # a batch killed outright (kill -9) must not leave workers converting on their own
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere an orphan finishes its model
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(EXIT_STOPPED)
    # the worker keeps its runtimes, reference graphs and torch modules for every model it verifies;
    # each runtime gets this worker's share of the cores
    _warm.set_threads(threads)


def _in_worker(job):
    global _busy
    _busy = True
    try:
        return _process_model(job)
    except _Stopped:
        os._exit(EXIT_STOPPED)
    finally:
        _busy = False


def _run_processes(jobs, workers, started, address=None):
    """Yield each job's record, at most ``workers`` models (default: the CPU cores) in worker processes at once."""
    workers = min(workers or _default_jobs(), len(jobs))
    queue = list(reversed(jobs))
    running, pool = {}, None
    context = multiprocessing.get_context(START_METHOD)
    others = set(multiprocessing.active_children())
    try:
        while queue or running:
            if pool is None:
                pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=workers, mp_context=context, initializer=_worker_init,
                    initargs=(os.getpid(), max(1, _default_jobs() // workers)))
            broken = False
            while queue and len(running) < workers:
                job = queue.pop()
                running[pool.submit(_in_worker, job)] = job
                started(job.model.id)
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    yield future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    broken = True
                    yield _failed_record(job.model, WORKER_DIED)
                except Exception as error:  # e.g. the output directory became unwritable: this model fails
                    yield _failed_record(job.model, f"unexpected {type(error).__name__}: {_one_line(error)}")
            if broken:
                # every model the dead pool held comes back failed; the rest go to a fresh pool
                for future in list(running):
                    yield _failed_record(running.pop(future).model, WORKER_DIED)
                pool.shutdown(wait=True)
                pool = None
    except BaseException:
        # Ctrl-C or an error here: stop the workers now; each removes its partial file as it exits
        for child in set(multiprocessing.active_children()) - others:
            child.terminate()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(jobs, workers, started, address=None):
    """Yield each job's record, run as Ray tasks on the cluster at ``address`` (default: a local instance)."""
    try:
        import ray
    except ImportError:
        raise ConvertError("--executor ray needs Ray; install it with: pip install 'ckpt-convert[ray]'") from None
    own = not ray.is_initialized()
    if own:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConvertError(f"cannot start or join Ray at {address or 'a local instance'} ({_one_line(error)}); "
                               "check --address") from None
    workers = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), len(jobs))
    task = ray.remote(num_cpus=1)(_process_model)
    queue, running = list(reversed(jobs)), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop()
                running[task.remote(job)] = job
                started(job.model.id)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job = running.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as error:
                    yield _failed_record(job.model, f"the Ray task failed: {_one_line(error)[:500]}")
    finally:
        for ref in running:
            ray.cancel(ref)  # not force: the task's conversion removes its partial file as it stops
        if own:
            ray.shutdown()


RUNNERS = {"process": _run_processes, "ray": _run_ray}


def _default_jobs():
    """Models at once by default: the CPU cores this process may use."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _exclusive(outdir):
    if storage.is_url(outdir):
        # a bucket has no locks: one batch at a time writes to an output prefix
        yield
        return
    # never through a link: opening one to write would create or truncate a file elsewhere
    try:
        handle = open(os.open(outdir / LOCK_FILENAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666), "r+")
    except OSError as error:
        raise ConvertError(f"{outdir / LOCK_FILENAME}: cannot lock the output directory ({error.strerror}); "
                           "remove it if it is a link") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a lock file removed by the batch that held it (below) no longer guards OUTDIR
            if os.fstat(handle.fileno()).st_ino != os.stat(outdir / LOCK_FILENAME, follow_symlinks=False).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            raise ConvertError(f"{outdir}: another batch is writing to it; wait for it to finish or pass another -o") \
                from None
        try:
            yield
        finally:
            # removed while still held: a batch that opened it meanwhile sees another inode and stops
            with contextlib.suppress(OSError):
                os.unlink(outdir / LOCK_FILENAME)


def run_batch(sources, outdir, *, targets=("torch",), options=None, verify=False, jobs=None, all_steps=False,
              executor="process", address=None, force=False, device="auto", progress=None):
    """Convert every model of ``sources`` to each target under ``outdir``; write ``report.json`` and ``report.md``.

    Args:
        sources: directories (searched recursively), ``.yaml``/``.csv`` manifests, or checkpoints.
        targets: ``torch``, ``keras``, ``onnx`` (a list or ``"torch,onnx"``); options: defaults of
            ``convert``'s ``arch``, ``mapping``, ``scope``, ``ema``, ``background``, ``aux``, ``input_size``,
            ``strict``.
        verify: check each output with ``converter.verify`` (TF-Slim reference on ``device``).
        jobs: models at once (default: the CPU cores; Ray: the cluster's CPUs).
        all_steps: every step of a training directory, not only the latest.
        executor: ``process`` (this machine) or ``ray`` (the cluster at ``address``).
        force: replace output files this batch did not write.
        progress: called as ``progress(event, value)``: ``("found", count)``, ``("started", model id)``,
            ``("finished", record)``.

    Returns:
        a ``BatchReport``; ``report.ok`` is false when any model failed.
    """
    started = time.perf_counter()
    if executor not in RUNNERS:
        raise ConvertError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ConvertError(f"--address {address} names a Ray cluster; add --executor ray")
    notify = progress or (lambda event, value: None)
    targets = _parse_targets(targets)
    # absolute, so that workers (and Ray nodes) find the same files
    outdir = storage.path(storage.absolute(outdir))
    if outdir.exists() and not outdir.is_dir():
        raise ConvertError(f"{outdir}: not a directory; pass an output directory with -o")
    # sources first: a batch refused for its sources leaves no OUTDIR behind
    models = discover(sources, targets=targets, options=options, all_steps=all_steps, exclude=[outdir])
    if not models:
        raise ConvertError(f"{', '.join(map(str, sources))}: no checkpoint found (no V2 .index file, V1 "
                           "checkpoint or manifest row); check the paths")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConvertError(f"{outdir}: cannot create the output directory ({error.strerror or error})") from None
    with _exclusive(outdir):
        for partial in outdir.rglob(PARTIAL_GLOB):
            if partial.is_symlink() or not partial.is_dir():
                partial.unlink()  # left by a batch that was killed; the lock says none is running
        notify("found", len(models))
        records, todo = {}, []
        for model in models:
            job = Job(model, str(outdir), verify=verify, force=force, device=device)
            record = _current_record(job)
            if record is None:
                todo.append(job)
            else:
                records[model.id] = record
                notify("finished", record)
        if todo:
            for record in RUNNERS[executor](todo, jobs, lambda model_id: notify("started", model_id), address):
                records[record["id"]] = record
                notify("finished", record)
        report = BatchReport(outdir, targets, [records[m.id] for m in models], time.perf_counter() - started)
        _write_json(outdir / REPORT_JSON, report.to_dict())
        with atomic_output(outdir / REPORT_MARKDOWN, force=True) as temp:
            temp.write_text(report.markdown())
    return report
