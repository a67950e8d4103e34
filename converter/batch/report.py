"""A batch's report: one ``ModelRecord`` per model, written as ``report.json`` and ``report.md``."""

import dataclasses
import pathlib

from converter import __version__
from converter.batch.records import ModelRecord, Status, TargetRecord


@dataclasses.dataclass(frozen=True)
class BatchReport:
    """One ``ModelRecord`` per model, in id order."""

    outdir: pathlib.Path
    targets: tuple
    models: list
    seconds: float

    @property
    def ok(self):
        return all(record.ok for record in self.models)

    def counts(self):
        """Status (its word) -> number of models."""
        counts = {}
        for record in self.models:
            counts[record.status.value] = counts.get(record.status.value, 0) + 1
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
            "models": [record.to_dict() for record in self.models],
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
            targets = ", ".join(f"{t} {entry.status}" for t, entry in record.targets.items())
            error = f"{record.max_error:.2e}" if record.max_error is not None else "-"
            cells = [f"`{record.id}`", record.architecture or "-", *_decision_cells(record), targets,
                     record.status.value, error, f"{record.seconds:.1f} s", record.reason]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(lines) + "\n"


def _decision_cells(record):
    # scope, classes (and the background rule), heads, input size, skipped variables
    decided = record.decisions
    if not decided:
        return ["-"] * 5
    background = decided["background"]
    classes = "-" if background["classes"] is None else f"{background['port_classes']} ({background['rule']})"
    heads = ", ".join(f"{group} {status}" for group, status in decided["heads"].items()) or "-"
    skipped = ", ".join(f"{count} {reason}" for reason, count in (record.skipped or {}).items()) or "-"
    return [f"`{decided['scope']}`", classes, heads, "x".join(map(str, decided["input_size"])), skipped]


def one_line(error):
    """An error (or a reason) as one line."""
    return " ".join(str(error).split()) or type(error).__name__


def failed_record(model, reason, seconds=0.0):
    """The record of a model none of whose targets could be done, for ``reason``."""
    reason = one_line(reason)
    targets = {t: TargetRecord(Status.FAILED, reason=reason) for t in model.targets}
    return ModelRecord(model.id, model.checkpoint, None, Status.FAILED, seconds=seconds, reason=reason,
                       targets=targets)


def target_record(model_id, entry, status, seconds=0.0):
    """The report's record of a target from its state entry (a ``TargetState``), with ``status``."""
    output = f"{model_id}/{entry.output}" if entry.output and entry.status == Status.OK else None
    return TargetRecord(status, output=output, max_error=entry.max_error, seconds=seconds, reason=entry.reason,
                        decisions=entry.decisions, skipped=entry.skipped, notes=entry.notes,
                        bytes_read=entry.bytes_read if status != Status.UP_TO_DATE else 0)


def model_record(model, architecture, targets, seconds):
    """A model's record from its targets' records: its status, reason, max error and decisions."""
    statuses = {entry.status for entry in targets.values()}
    failed = {t: entry.reason for t, entry in targets.items() if entry.status == Status.FAILED}
    if statuses == {Status.UP_TO_DATE}:
        status = Status.UP_TO_DATE
    elif not failed:
        status = Status.OK
    else:
        status = Status.FAILED if len(failed) == len(targets) else Status.PARTIAL
    reasons = set(failed.values())
    reason = reasons.pop() if len(failed) > 1 and len(reasons) == 1 else "; ".join(
        f"{t}: {why}" for t, why in failed.items())
    errors = [entry.max_error for entry in targets.values() if entry.max_error is not None]
    # what was read from the checkpoint is the same for every target: the first written one says it
    decided = [entry for entry in targets.values() if entry.decisions]
    return ModelRecord(model.id, model.checkpoint, architecture, status, seconds=seconds,
                       max_error=max(errors) if errors else None, reason=reason,
                       decisions=decided[0].decisions if decided else None,
                       skipped=decided[0].skipped if decided else {}, targets=targets)
