"""One model's job: convert (and verify) each of its targets that is not up to date, and record why not.

``process_model`` runs in a worker process or a Ray task and never raises: every failure becomes its
target's (or the model's) reason. ``up_to_date_record`` answers from the state alone, before any worker starts.
"""

import dataclasses
import os
import pathlib
import time
import traceback

from converter import __version__, storage
from converter import mapping as tables
from converter.batch.records import State, Status, TargetState
from converter.batch.report import failed_record, model_record, one_line, target_record
from converter.batch.state import (checkpoint_files, content_hash, current_state, file_digest, output_current,
                                   output_name, read_state, target_key, write_state)
from converter.checkpoint import open_checkpoint
from converter.convert import TF2_FORMAT, convert, table_for
from converter.errors import ConvertError
from converter.metagraph import recover


def up_to_date_record(job):
    """The report record of a model whose every output is up to date, from its state alone; else None.

    Reads no checkpoint bytes: the files' sizes and mtimes must match the state's, and the mapping
    table's digest, the options and the version must give the recorded keys.
    """
    model = job.model
    folder = storage.path(job.outdir) / model.id
    state = current_state(model, folder)
    if state is None:
        return None
    targets = {}
    for target in model.targets:
        entry = state.targets.get(target)
        key = target_key(state.content, state.table_digest, target, output_name(model.id, target), model.options)
        if not output_current(entry, key, folder) or (job.verify and entry.verified is not True):
            return None
        targets[target] = target_record(model.id, entry, Status.UP_TO_DATE)
    return model_record(model, state.architecture, targets, 0.0)


def process_model(job):
    """Convert (and verify) one model's targets that are not up to date; returns its ``ModelRecord``.

    Runs in a worker. Every failure is recorded with its reason, never raised.
    """
    started = time.perf_counter()
    model = job.model
    if model.error:
        return failed_record(model, model.error)
    folder = storage.path(job.outdir) / model.id
    try:
        _make_folder(folder, job.outdir)
        previous = read_state(folder)
        content, files = content_hash(checkpoint_files(model.checkpoint), previous.files)
        table = _table_for(model)
    except ConvertError as error:
        return failed_record(model, one_line(error), time.perf_counter() - started)
    except Exception as error:  # a bug must not stop the batch: the model fails with the reason
        return failed_record(model, f"unexpected {type(error).__name__}: {one_line(error)}",
                             time.perf_counter() - started)
    architecture = table.architecture if table else None
    state = State(__version__, model.checkpoint, architecture, content, files,
                  str(table.path) if table else None, file_digest(table.path) if table else "", dict(previous.targets))
    seconds, worked = {}, {}
    for target in model.targets:
        name = output_name(model.id, target)
        key = target_key(content, state.table_digest, target, name, model.options)
        if output_current(previous.targets.get(target), key, folder):
            seconds[target], worked[target] = 0.0, False
            continue
        started_target = time.perf_counter()
        state = _convert_target(job, folder, state, target, name, key)
        seconds[target], worked[target] = time.perf_counter() - started_target, True
    if job.verify:
        todo = [t for t in model.targets
                if state.targets[t].status == Status.OK and state.targets[t].verified is not True]
        state, shares = _verify(job, folder, state, todo)
        for target, share in shares.items():
            seconds[target] += share
            worked[target] = True
    write_state(folder, state)
    targets = {}
    for target in model.targets:
        entry = state.targets[target]
        status = entry.status if worked[target] or entry.status == Status.FAILED else Status.UP_TO_DATE
        targets[target] = target_record(model.id, entry, status, seconds[target])
    return model_record(model, architecture, targets, time.perf_counter() - started)


def _table_for(model):
    options = model.options
    if options.mapping or options.arch:
        return table_for([], options.arch, options.mapping)
    with open_checkpoint(model.checkpoint) as ckpt:
        # a TF2 checkpoint, or one no table fits and no .meta graph describes: convert says which, per target
        if ckpt.format == TF2_FORMAT or not (tables.networks(ckpt.names()) or recover.meta_beside(ckpt.path)):
            return None
        return table_for(ckpt.names(), scope=options.scope, checkpoint=ckpt.path)


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


def _convert_target(job, folder, state, target, name, key):
    """Write one target; the state claims the output first, so a rerun may replace what this run wrote."""
    model, output = job.model, folder / name
    previous = state.targets.get(target)
    if output.exists() and (previous is None or previous.output != name) and not job.force:
        return state.with_target(target, TargetState(
            Status.FAILED, key, reason=f"{output}: exists and this batch did not write it; pass --force to replace it"))
    state = state.with_target(target, TargetState(Status.PENDING, key, output=name))
    write_state(folder, state)
    try:
        # a writer option of another target (an ONNX opset beside a torch output) is not this output's
        result = convert(model.checkpoint, target, output, options=model.options.for_target(target), force=True)
        stat = output.stat()
        entry = TargetState(Status.OK, key, output=name, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                            bytes_read=result.bytes_read, decisions=result.plan.to_dict(),
                            skipped=result.skipped_counts(), notes=tuple(result.notes))
    except ConvertError as error:
        entry = TargetState(Status.FAILED, key, output=name, reason=one_line(error))
    except Exception as error:  # a bug must not stop the batch: the target fails with the reason
        entry = TargetState(Status.FAILED, key, output=name, reason=f"unexpected {type(error).__name__}: "
                                                                     f"{one_line(error)}",
                            detail=traceback.format_exc())
    return state.with_target(target, entry)


def _verify(job, folder, state, targets):
    """Run ``converter.verify`` once on the outputs of ``targets``; record the max error, fail the non-equivalent.

    Returns the new state and each target's share of the time taken.
    """
    if not targets:
        return state, {}
    from converter.verify import verify

    started = time.perf_counter()
    model = job.model
    paths = {t: folder / state.targets[t].output for t in targets}
    try:
        with storage.local_copies(model.checkpoint, list(paths.values())) as (checkpoint, ported):
            report = verify(checkpoint, ported, **model.options.verify_arguments(), device=job.device)
            labels = {backend.path: backend.name for backend in report.backends}
            labels = {str(remote): labels.get(str(local)) for remote, local in zip(paths.values(), ported)}
    except ConvertError as error:
        report, reason = None, f"verification failed: {one_line(error)}"
    except Exception as error:  # a bug must not stop the batch: the targets fail with the reason
        report, reason = None, f"verification failed: unexpected {type(error).__name__}: {one_line(error)}"
    share = (time.perf_counter() - started) / len(targets)
    labels = labels if report else {}
    for target, path in paths.items():
        entry = state.targets[target]
        checks = [c for c in (report.checks if report else []) if c.backend == labels.get(str(path))]
        errors = [c.metrics["max_abs"] for c in checks if c.kind == "output" and "max_abs" in c.metrics]
        failures = [c for c in checks if not c.passed]
        verified = bool(checks) and not failures
        entry = dataclasses.replace(entry, max_error=max(errors) if errors else None, verified=verified)
        if not verified:
            if report is not None:
                first = failures[0] if failures else None
                reason = (f"not equivalent: {first.message or first.name} ({len(failures)} failed "
                          f"check{'s' if len(failures) != 1 else ''})" if first else "verify ran no check on it")
            entry = dataclasses.replace(entry, status=Status.FAILED, reason=reason)
        state = state.with_target(target, entry)
    return state, {target: share for target in targets}
