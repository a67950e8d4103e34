"""Where checkpoints and ports live: local paths, or ``s3://`` and ``gs://`` objects through fsspec.

``path(value)`` is the one entry point: a ``pathlib.Path`` for a local path (fsspec is never
imported for one), a ``RemotePath`` for a URL. ``RemotePath`` has the part of ``pathlib.Path`` the
converter uses (``name``, ``parent``, ``/``, ``exists``, ``is_file``, ``stat``, ``open``, ``glob``...),
so the reader, the writers' atomic output and the batch take either.

Credentials and endpoints come from each store's own environment and configuration: for S3,
``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``... as boto reads them; for Google
Cloud Storage, ``GOOGLE_APPLICATION_CREDENTIALS`` or the gcloud login, and ``STORAGE_EMULATOR_HOST``.

``RangedFile`` reads an object by byte ranges: ``prefetch`` coalesces the ranges a conversion needs
and fetches them several at a time; every byte fetched is counted in ``bytes_read``.
"""

import bisect
import contextlib
import dataclasses
import fnmatch
import importlib
import io
import logging
import os
import pathlib
import posixpath
import re

from converter.errors import ConvertError

# URL scheme -> (fsspec protocol, the package that implements it)
SCHEMES = {"s3": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs")}
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
CLOUD_EXTRA = "pip install 'ckpt-convert[cloud]'"
# exceptions (by module and class) each store's client raises when it finds no usable credentials
_CREDENTIAL_ERRORS = (
    ("botocore.exceptions", "NoCredentialsError"),
    ("botocore.exceptions", "PartialCredentialsError"),
    ("google.auth.exceptions", "DefaultCredentialsError"),
    ("google.auth.exceptions", "RefreshError"),
)
CREDENTIAL_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`",
}
# ranges closer than this are fetched as one request: a request costs more than this many bytes
COALESCE_GAP = 64 << 10
# a coalesced range larger than this is split, so that one large tensor is fetched in parallel too
MAX_REQUEST = 8 << 20
# requests in flight at once
CONCURRENCY = 8
DEBUG_VARIABLE = "CKPT_CONVERT_DEBUG"


def is_url(value):
    """Whether ``value`` (a str or path) is an object-store URL (``s3://``, ``gs://``)."""
    return isinstance(value, RemotePath) or (isinstance(value, str) and _scheme(value) in SCHEMES)


def _scheme(text):
    match = _URL.match(text)
    return match["scheme"].lower() if match else None


def path(value):
    """A ``RemotePath`` for an ``s3://``/``gs://`` URL, else a ``pathlib.Path``.

    Any other ``scheme://`` is refused with a ConvertError rather than taken as a local path.
    """
    if isinstance(value, RemotePath):
        return value
    text = os.fspath(value) if not isinstance(value, str) else value
    scheme = _scheme(text) if isinstance(text, str) else None
    if scheme in SCHEMES:
        return RemotePath(text)
    if scheme is not None:
        raise ConvertError(f"{text}: {scheme}:// is not a supported store; use a local path, s3:// or gs://")
    return pathlib.Path(text)


def absolute(value):
    """``os.path.abspath`` for a local path; a URL is already absolute."""
    return str(value) if is_url(value) else os.path.abspath(value)


_filesystems = {}


def filesystem(scheme):
    """The fsspec file system of a URL scheme, imported on first use; ConvertError naming the extra if missing."""
    protocol, package = SCHEMES[scheme]
    if protocol not in _filesystems:
        try:
            importlib.import_module(package)
            fsspec = importlib.import_module("fsspec")
        except ImportError:
            raise ConvertError(f"{scheme}:// paths need {package}; install it with: {CLOUD_EXTRA}") from None
        if not os.environ.get(DEBUG_VARIABLE):
            # the clients log each retry with a traceback; the error that ends the run says it in one line
            for name in (package, "fsspec"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        # no listing cache: other processes (a batch's workers, another run) write the same buckets
        _filesystems[protocol] = fsspec.filesystem(protocol, use_listings_cache=False)
    return _filesystems[protocol]


def _credential_error(error):
    for module, name in _CREDENTIAL_ERRORS:
        loaded = importlib.import_module(module) if _importable(module) else None
        if loaded is not None and isinstance(error, getattr(loaded, name)):
            return True
    return False


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@dataclasses.dataclass
class _Stat:
    """What ``stat`` gives for an object: ``st_mtime_ns`` is the store's version token, see ``RemotePath.stat``."""

    st_size: int
    st_mtime_ns: str


class RemotePath:
    """An object (or a prefix, as a folder) in a bucket, addressed as ``scheme://bucket/key``."""

    def __init__(self, url):
        match = _URL.match(str(url))
        self.scheme = match["scheme"].lower()
        if self.scheme == "gcs":
            self.scheme = "gs"
        parts = [part for part in match["rest"].split("/") if part not in ("", ".")]
        if not parts:
            raise ConvertError(f"{url}: no bucket in the URL; use {self.scheme}://BUCKET/KEY")
        if ".." in parts:
            raise ConvertError(f"{url}: '..' has no meaning in an object key; write the key in full")
        self.bucket = parts[0]
        self.key = "/".join(parts[1:])

    # -- pure path operations

    @property
    def _fs_path(self):
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def __str__(self):
        return f"{self.scheme}://{self._fs_path}"

    def __repr__(self):
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))

    def __lt__(self, other):
        return str(self) < str(other)

    def __truediv__(self, other):
        return RemotePath(f"{self}/{other}")

    def joinpath(self, *others):
        return RemotePath("/".join([str(self), *map(str, others)]))

    @property
    def name(self):
        return posixpath.basename(self.key)

    @property
    def parent(self):
        return RemotePath(f"{self.scheme}://{self.bucket}/{posixpath.dirname(self.key)}")

    @property
    def suffix(self):
        return pathlib.PurePosixPath(self.name).suffix if self.name else ""

    @property
    def stem(self):
        return pathlib.PurePosixPath(self.name).stem if self.name else ""

    @property
    def parts(self):
        return (f"{self.scheme}://{self.bucket}", *[p for p in self.key.split("/") if p])

    def with_name(self, name):
        return self.parent / name

    def with_suffix(self, suffix):
        return self.with_name(self.stem + suffix)

    def as_posix(self):
        return str(self)

    def relative_to(self, other):
        """The key below ``other`` (a RemotePath or URL) as a ``PurePosixPath``; ValueError if not below it."""
        other = path(other) if not isinstance(other, RemotePath) else other
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not in {other}")
        return pathlib.PurePosixPath(self.key[len(other.key):].lstrip("/") if other.key else self.key)

    def is_relative_to(self, other):
        other = path(other) if not isinstance(other, RemotePath) else other
        if (self.scheme, self.bucket) != (getattr(other, "scheme", None), getattr(other, "bucket", None)):
            return False
        return not other.key or self.key == other.key or self.key.startswith(other.key + "/")

    def resolve(self):
        return self

    def absolute(self):
        return self

    def is_symlink(self):
        return False

    # -- the store

    @property
    def fs(self):
        return filesystem(self.scheme)

    @contextlib.contextmanager
    def _errors(self):
        """Store failures as one-line ConvertErrors; a missing object stays a FileNotFoundError."""
        try:
            yield
        except FileNotFoundError:
            self._check_bucket()
            raise
        except PermissionError as error:
            raise ConvertError(f"{self}: access denied ({_one_line(error)}); check the credentials and the "
                               f"bucket's permissions") from None
        except ConvertError:
            raise
        except Exception as error:
            if _credential_error(error):
                raise ConvertError(f"{self}: no credentials for {self.scheme}:// ({_one_line(error)}); "
                                   f"{CREDENTIAL_HINTS[self.scheme]}") from None
            if isinstance(error, OSError):
                raise
            raise ConvertError(f"{self}: the store failed ({type(error).__name__}: {_one_line(error)})") from None

    def _check_bucket(self):
        try:
            exists = self.fs.exists(self.bucket)
        except Exception:  # an error about the bucket itself: the caller's own error says enough
            return
        if not exists:
            raise ConvertError(f"{self}: the bucket {self.bucket} does not exist (or these credentials cannot see "
                               f"it); create it or correct the URL")

    def info(self):
        """The store's record of the object (``size``, ``type``, ``ETag``...); FileNotFoundError if none."""
        with self._errors():
            return self.fs.info(self._fs_path)

    def exists(self):
        try:
            self.info()
        except FileNotFoundError:
            return False
        return True

    def is_file(self):
        try:
            return self.info()["type"] == "file"
        except FileNotFoundError:
            return False

    def is_dir(self):
        if not self.key:
            with self._errors():
                return self.fs.exists(self.bucket)
        try:
            return self.info()["type"] == "directory"
        except FileNotFoundError:
            return False

    def stat(self):
        """Size, and as ``st_mtime_ns`` the store's version token of the object.

        The token changes whenever the object's bytes do (S3's ETag; Google Cloud Storage's
        generation), which is all callers compare a modification time for.
        """
        info = self.info()
        if info["type"] != "file":
            raise IsADirectoryError(21, "is a folder", str(self))
        return _Stat(int(info["size"]), _version(info))

    def content_digest(self):
        """A digest of the object's bytes that the store computed (S3 ETag, GCS MD5/CRC32C), or None."""
        return _content_digest(self.scheme, self.info())

    def open(self, mode="rb"):
        if mode not in ("rb", "r"):
            raise ValueError(f"{self}: objects are opened for reading here; write through converter._atomic")
        with self._errors():
            handle = self.fs.open(self._fs_path, "rb")
        return handle if mode == "rb" else io.TextIOWrapper(handle, encoding="utf-8")

    def read_bytes(self):
        with self._errors():
            data = self.fs.cat_file(self._fs_path)
        return data

    def read_range(self, start, end):
        """Bytes ``start`` to ``end`` of the object."""
        with self._errors():
            return self.fs.cat_file(self._fs_path, start=start, end=end)

    def read_text(self, encoding="utf-8"):
        return self.read_bytes().decode(encoding)

    def upload(self, local):
        """Put local file ``local`` at this key in one atomic upload: the object appears whole or not at all."""
        with self._errors():
            self.fs.put_file(os.fspath(local), self._fs_path)

    def unlink(self, missing_ok=False):
        try:
            with self._errors():
                self.fs.rm_file(self._fs_path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents=False, exist_ok=False):
        """Folders are key prefixes and need no creating; the bucket must exist."""
        with self._errors():
            if not self.fs.exists(self.bucket):
                raise ConvertError(f"{self}: the bucket {self.bucket} does not exist; create it first")

    def iterdir(self):
        with self._errors():
            entries = self.fs.ls(self._fs_path, detail=False)
        return [RemotePath(f"{self.scheme}://{entry}") for entry in sorted(entries)]

    def glob(self, pattern):
        with self._errors():
            found = self.fs.glob(f"{self._fs_path}/{pattern}")
        return [RemotePath(f"{self.scheme}://{entry}") for entry in sorted(found)]

    def rglob(self, pattern):
        return [p for p, _ in self.walk_files() if fnmatch.fnmatch(p.name, pattern)]

    def walk_files(self):
        """``(RemotePath, info)`` of every object under this prefix, sorted by key."""
        with self._errors():
            found = self.fs.find(self._fs_path, detail=True) if self.key or self.fs.exists(self.bucket) else {}
        return [(RemotePath(f"{self.scheme}://{key}"), info) for key, info in sorted(found.items())
                if info.get("type") == "file"]


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _version(info):
    for field in ("generation", "ETag", "etag", "md5Hash", "crc32c", "LastModified", "mtime", "updated"):
        if info.get(field) not in (None, ""):
            return f"{field}:{info[field]}"
    return f"size:{info['size']}"


def _content_digest(scheme, info):
    """The store's own digest of an object's bytes, where the store guarantees one."""
    if scheme == "gs":
        for field in ("md5Hash", "crc32c"):
            if info.get(field):
                return f"{field}:{info[field]}"
        return None
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    # S3's ETag is the MD5 of the bytes (single part) or of the parts' MD5s ("-N"): either way a
    # function of the bytes, except under SSE-KMS/SSE-C, where it is random per upload and so
    # still changes whenever the bytes do
    return f"etag:{etag}" if etag else None


class RangedFile:
    """An object read by byte ranges: ``prefetch`` fetches many ranges at once, ``read`` serves them.

    ``len()`` is the object's size; ``read(offset, size)`` returns a memoryview, from prefetched bytes
    where they cover it, else one ranged request. ``bytes_read`` counts every byte fetched.
    """

    def __init__(self, remote, size):
        self.remote = remote
        self.size = size
        self.bytes_read = 0
        self._starts, self._blocks = [], []  # sorted start offsets and their bytes

    def __len__(self):
        return self.size

    def prefetch(self, ranges):
        """Fetch ``(offset, size)`` ranges not held yet: coalesced, split, several requests in flight."""
        wanted = sorted((offset, offset + size) for offset, size in ranges if size and not self._covered(offset, size))
        requests = []
        for start, end in coalesce(wanted, COALESCE_GAP):
            requests += [(s, min(s + MAX_REQUEST, end)) for s in range(start, end, MAX_REQUEST)]
        if not requests:
            return
        fs_path = self.remote._fs_path
        with self.remote._errors():
            blocks = self.remote.fs.cat_ranges([fs_path] * len(requests), [s for s, _ in requests],
                                               [e for _, e in requests], batch_size=CONCURRENCY)
        for (start, end), block in zip(requests, blocks):
            if isinstance(block, Exception):
                raise block
            self._hold(start, end, block)

    def _hold(self, start, end, block):
        if len(block) != end - start:
            raise OSError(5, f"the store returned {len(block)} bytes for range {start}-{end} (truncated object?)")
        self.bytes_read += len(block)
        index = bisect.bisect(self._starts, start)
        self._starts.insert(index, start)
        self._blocks.insert(index, block)

    def _covered(self, offset, size):
        # the block starting at or before ``offset`` (requests are split, so look at a run of them)
        index = bisect.bisect(self._starts, offset) - 1
        end = offset + size
        position = offset
        while 0 <= index < len(self._starts) and self._starts[index] <= position:
            block_end = self._starts[index] + len(self._blocks[index])
            if block_end >= end:
                return True
            position = max(position, block_end)
            index += 1
        return False

    def read(self, offset, size):
        """``size`` bytes at ``offset`` as a read-only memoryview."""
        if not size:
            return memoryview(b"")
        index = bisect.bisect(self._starts, offset) - 1
        if index >= 0:
            start, block = self._starts[index], self._blocks[index]
            if offset + size <= start + len(block):
                return memoryview(block)[offset - start: offset - start + size]
        if not self._covered(offset, size):
            self.prefetch([(offset, size)])
        # the range spans blocks fetched separately: join them
        pieces, position, end = [], offset, offset + size
        index = bisect.bisect(self._starts, offset) - 1
        while position < end:
            start, block = self._starts[index], self._blocks[index]
            pieces.append(memoryview(block)[position - start: min(end, start + len(block)) - start])
            position = start + len(block)
            index += 1
        return memoryview(b"".join(pieces))


def coalesce(ranges, gap):
    """Sorted ``(start, end)`` ranges merged where they overlap or lie within ``gap`` bytes of each other."""
    merged = []
    for start, end in ranges:
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(r) for r in merged]


def walk(root, excluded=()):
    """``(folder, sorted object names)`` of every folder under URL ``root``, from one listing.

    Folders at or under a path in ``excluded`` are left out.
    """
    root = path(root)
    folders = {}
    for remote, _ in root.walk_files():
        folders.setdefault(remote.parent, []).append(remote.name)
    skip = [path(other) for other in excluded if is_url(other)]
    for folder in sorted(folders):
        if not any(folder.is_relative_to(other) for other in skip):
            yield folder, sorted(folders[folder])


def checkpoint_objects(checkpoint):
    """The objects a remote checkpoint is made of: ``.index`` and data shards, or its V1 file(s), and the
    ``.meta`` graph beside it where there is one."""
    from converter.checkpoint import _paths

    kind, resolved = _paths.resolve(checkpoint)
    resolved = path(resolved)
    if kind == "v2":
        files = [path(f"{resolved}.index"), *resolved.parent.glob(resolved.name + ".data-*")]
    else:
        files = [resolved] if resolved.is_file() else resolved.parent.glob(resolved.name)
    meta = path(f"{resolved}.meta")
    return resolved, files + ([meta] if meta.is_file() else [])


@contextlib.contextmanager
def local_copies(checkpoint, files=()):
    """Local paths for ``checkpoint`` and ``files``, downloading those in a store to a temporary folder.

    For what must read every byte with a library that reads local files only (the TensorFlow
    reference of ``verify``). Yields ``(checkpoint, files)``; local paths come back unchanged.
    """
    import tempfile

    if not is_url(checkpoint) and not any(is_url(f) for f in files):
        yield checkpoint, list(files)
        return
    with tempfile.TemporaryDirectory(prefix="ckpt-convert-stage-") as scratch:
        local_checkpoint = checkpoint
        if is_url(checkpoint):
            resolved, objects = checkpoint_objects(checkpoint)
            folder = pathlib.Path(scratch, "checkpoint")
            folder.mkdir()
            for remote in objects:
                _download(remote, folder / remote.name)
            local_checkpoint = folder / resolved.name
        local_files = []
        for number, remote in enumerate(files):
            if not is_url(remote):
                local_files.append(remote)
                continue
            remote = path(remote)
            local = pathlib.Path(scratch, f"port-{number}", remote.name)
            local.parent.mkdir()
            _download(remote, local)
            local_files.append(local)
        yield local_checkpoint, local_files


def _download(remote, local):
    with remote._errors():
        remote.fs.get_file(remote._fs_path, os.fspath(local))
