"""Atomic output: write to a temporary file beside the target, then rename it into place.

An ``s3://`` or ``gs://`` target is written to a local temporary file, then put in one upload,
which the store makes atomic (S3: a single PUT, or a multipart upload that exists only once
completed and is aborted on failure; Google Cloud Storage: a simple or resumable upload that exists
only once finalised): no object ever appears under the final name with part of its bytes.
"""

import contextlib
import os
import pathlib
import tempfile

from converter import storage
from converter.errors import ConvertError, OutputExistsError

# a new output gets the permissions an ordinary open() would give it, not mkstemp's 0600
_DEFAULT_MODE = 0o666
# the temporary name is ".<name>.<8 random>.partial"; this much of the name keeps it within the
# 255 bytes most file systems allow, so any output name that fits gets a temporary name that fits
_TEMP_STEM_BYTES = 200


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_target(path, force):
    try:
        if path.is_dir():
            raise ConvertError(f"{path}: is a directory; name an output file")
        # a link counts as existing even when it points nowhere: replacing it is overwriting
        if os.path.lexists(path) and not force:
            raise OutputExistsError(f"{path}: already exists; pass --force to overwrite it")
        if not path.parent.is_dir():
            raise ConvertError(f"{path}: its directory {path.parent} does not exist; create it first")
    except OSError as error:  # a name too long, a component that is not a directory...
        raise ConvertError(f"{path}: cannot write here ({error.strerror or error}); choose another output") from None


@contextlib.contextmanager
def atomic_output(path, force=False):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    Raises OutputExistsError if ``path`` exists and ``force`` is false, before anything is written.
    ``path`` may be an ``s3://`` or ``gs://`` URL (see the module's docstring).
    """
    if storage.is_url(path):
        with _atomic_upload(storage.path(path), force) as temp:
            yield temp
        return
    path = pathlib.Path(path)
    _check_target(path, force)
    # the same directory, so the final rename stays on one file system and is atomic
    stem = os.fsdecode(os.fsencode(path.name)[:_TEMP_STEM_BYTES])
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise ConvertError(f"{path}: cannot write here ({error.strerror}); choose another output") from None
    os.close(handle)
    temp = pathlib.Path(temp)
    try:
        os.chmod(temp, _DEFAULT_MODE & ~_umask())
        yield temp
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise ConvertError(f"{path}: cannot write ({error.strerror or error}); nothing was written") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _check_remote_target(path, force):
    if not path.key or path.is_dir():
        raise ConvertError(f"{path}: is a folder (a key prefix); name an output object")
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: already exists; pass --force to overwrite it")
    path.mkdir()  # the bucket must exist


@contextlib.contextmanager
def _atomic_upload(path, force):
    _check_remote_target(path, force)
    stem = os.fsdecode(os.fsencode(path.name)[:_TEMP_STEM_BYTES])
    with tempfile.TemporaryDirectory(prefix="ckpt-convert-upload-") as scratch:
        temp = pathlib.Path(scratch, f".{stem}.partial")
        yield temp
        try:
            path.upload(temp)
        except OSError as error:
            raise ConvertError(f"{path}: cannot upload ({error.strerror or error}); nothing was written") from None
