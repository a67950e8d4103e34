"""Batch migration: many checkpoints to many targets, in parallel, resumable, with one report.

``run_batch`` finds checkpoints (``discovery``: directories searched recursively, ``manifests``),
converts each to each target (``worker``) in worker processes or Ray tasks (``executors``),
optionally verifies the outputs, and writes ``OUTDIR/report.json`` and ``OUTDIR/report.md``
(``report``). Model ``<id>`` (its checkpoint's path relative to its source) gets the folder
``OUTDIR/<id>/``: its outputs and ``state.json`` (``state``), which records per target a key over
everything the output depends on (the checkpoint's bytes, the mapping table, the ``Options``, the
tool version). A rerun skips a target whose key and output file are unchanged and redoes the rest;
every file is written atomically, so an interrupted batch resumes cleanly.
"""

import contextlib
import fcntl
import os
import time

from converter import storage
from converter._atomic import atomic_output
from converter.batch.discovery import (LOCK_FILENAME, PARTIAL_GLOB, REPORT_JSON, REPORT_MARKDOWN, STATE_FILENAME,
                                       discover, parse_targets)
from converter.batch.executors import EXECUTORS, RUNNERS
from converter.batch.manifests import read_manifest
from converter.batch.records import Job, Model, ModelRecord, State, Status, TargetRecord, TargetState
from converter.batch.report import BatchReport
from converter.batch.state import checkpoint_files, content_hash, output_name, target_key, write_json
from converter.batch.worker import up_to_date_record
from converter.errors import ConvertError
from converter.options import Options

__all__ = ["run_batch", "discover", "read_manifest", "parse_targets", "output_name", "checkpoint_files",
           "content_hash", "target_key", "BatchReport", "Model", "Job", "ModelRecord", "TargetRecord", "State",
           "TargetState", "Status", "Options", "EXECUTORS", "EXIT_FAILED", "STATE_FILENAME", "REPORT_JSON",
           "REPORT_MARKDOWN", "LOCK_FILENAME", "PARTIAL_GLOB"]

# the exit status of a batch in which any model failed
EXIT_FAILED = 1


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
              executor="process", address=None, force=False, device="auto", progress=None, **fields):
    """Convert every model of ``sources`` to each target under ``outdir``; write ``report.json`` and ``report.md``.

    Args:
        sources: directories (searched recursively), ``.yaml``/``.csv`` manifests, or checkpoints.
        targets: ``torch``, ``keras``, ``onnx`` (a list or ``"torch,onnx"``).
        options: an ``Options``, and ``fields`` its fields as keyword arguments (as ``convert`` takes
            them): how every model is ported where its manifest row does not say otherwise.
        verify: check each output with ``converter.verify`` (TF-Slim reference on ``device``).
        jobs: models at once (default: the CPU cores; Ray: the cluster's CPUs).
        all_steps: every step of a training directory, not only the latest.
        executor: ``process`` (this machine) or ``ray`` (the cluster at ``address``).
        force: replace output files this batch did not write.
        progress: called as ``progress(event, value)``: ``("found", count)``, ``("started", model id)``,
            ``("finished", record)`` (a ``ModelRecord``).

    Returns:
        a ``BatchReport``; ``report.ok`` is false when any model failed.
    """
    started = time.perf_counter()
    if executor not in RUNNERS:
        raise ConvertError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ConvertError(f"--address {address} names a Ray cluster; add --executor ray")
    notify = progress or (lambda event, value: None)
    targets = parse_targets(targets)
    options = Options.of(options, **fields)
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
            record = up_to_date_record(job)
            if record is None:
                todo.append(job)
            else:
                records[model.id] = record
                notify("finished", record)
        if todo:
            for record in RUNNERS[executor](todo, jobs, lambda model_id: notify("started", model_id), address):
                records[record.id] = record
                notify("finished", record)
        report = BatchReport(outdir, targets, [records[m.id] for m in models], time.perf_counter() - started)
        write_json(outdir / REPORT_JSON, report.to_dict())
        with atomic_output(outdir / REPORT_MARKDOWN, force=True) as temp:
            temp.write_text(report.markdown())
    return report
