"""The resumable state: content hashes, output keys, and each model's ``state.json``.

A model's folder holds ``state.json`` (``records.State``): the checkpoint's content hash and its
files' sizes and mtimes, the mapping table's digest, and per target the key of the output written
(``target_key``: everything that decides its bytes). A rerun skips a target whose key and output file
are unchanged; ``current_state`` says so from the state alone, without reading the checkpoint.
"""

import glob
import hashlib
import json
import pathlib

from converter import __version__, storage
from converter._atomic import atomic_output
from converter.batch.discovery import STATE_FILENAME
from converter.batch.records import EMPTY_STATE, State, Status
from converter.checkpoint import _paths
from converter.convert import default_output
from converter.errors import ConvertError

HASH_CHUNK = 1 << 20
DIGEST_SIZE = 16


def checkpoint_files(checkpoint):
    """The files holding a checkpoint's bytes: V2 index and data shards, or the V1 file (or its shards)."""
    kind, path = _paths.resolve(checkpoint)
    path = storage.path(path)
    if kind == "v2":
        return [storage.path(f"{path}.index"), *sorted(path.parent.glob(glob.escape(path.name) + ".data-*"))]
    return sorted(path.parent.glob(path.name)) if glob.has_magic(path.name) else [path]


def file_digest(path):
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
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": file_digest(path)}
        entries[str(path)] = entry
        whole.update(f"{storage.path(path).name}\0{entry['digest']}\0".encode())
    return whole.hexdigest(), entries


def unchanged(files, cache):
    """``files`` are exactly those of ``cache``, each with the size and mtime recorded."""
    if sorted(map(str, files)) != sorted(cache):
        return False
    for path in files:
        stat = path.stat()
        if (cache[str(path)]["size"], cache[str(path)]["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            return False
    return True


def target_key(content, table_digest, target, output, options):
    """The key of one output: everything that decides its bytes, with ``options`` (an ``Options``) by value.

    Two ports with different options never share a key; the same options always give the same one.
    """
    text = json.dumps({"version": __version__, "checkpoint": content, "mapping": table_digest,
                       "target": target, "output": output, "options": options.key_fields()}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_SIZE).hexdigest()


def output_name(model_id, target):
    """``<name>.<suffix>`` of a model's output: named as ``convert`` names one beside its checkpoint."""
    return default_output(pathlib.PurePosixPath(model_id).name, target).name


def read_state(folder):
    """The state in ``folder`` (``EMPTY_STATE`` where there is none or it cannot be read)."""
    try:
        data = json.loads((folder / STATE_FILENAME).read_text())
    except (OSError, ValueError):
        return EMPTY_STATE
    return State.from_dict(data) if isinstance(data, dict) else EMPTY_STATE


def write_state(folder, state):
    write_json(folder / STATE_FILENAME, state.to_dict())


def write_json(path, data):
    with atomic_output(path, force=True) as temp:
        temp.write_text(json.dumps(data, indent=2) + "\n")


def output_current(entry, key, folder):
    """The state's entry (a ``TargetState`` or None) says this key's output was written, and the file is unchanged."""
    if entry is None or entry.status != Status.OK or entry.key != key or not entry.written:
        return False
    try:
        stat = (folder / entry.output).stat()
    except (OSError, TypeError):
        return False
    return (stat.st_size, stat.st_mtime_ns) == (entry.size, entry.mtime_ns)


def current_state(model, folder):
    """The state of a model whose checkpoint files and mapping table are as its state records; else None.

    Reads no checkpoint bytes: the files' sizes and mtimes must match the state's, and the table's digest.
    """
    state = read_state(folder)
    if model.error or state.version != __version__:
        return None
    try:
        if not unchanged(checkpoint_files(model.checkpoint), state.files):
            return None
        table = state.table_path
        if (file_digest(storage.path(table)) if table else "") != state.table_digest:
            return None
    except (ConvertError, OSError, KeyError, TypeError):
        return None
    return state
