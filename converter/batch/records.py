"""The batch's typed records: a model to port, a worker's job, a target's state entry, report records.

``TargetState`` and ``State`` are what ``OUTDIR/<id>/state.json`` holds; ``TargetRecord`` and
``ModelRecord`` what ``report.json`` lists. Each has ``to_dict`` (the JSON form) and the state
records ``from_dict`` too, which reads any state file a batch has written.
"""

import dataclasses
import enum

from converter.options import Options


class Status(str, enum.Enum):
    """The status of a target and of a model; the value is the word ``report.json`` and ``state.json`` hold."""

    OK = "ok"
    UP_TO_DATE = "up to date"
    FAILED = "failed"
    PARTIAL = "partial"
    PENDING = "pending"

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)


@dataclasses.dataclass(frozen=True)
class Model:
    """One checkpoint of a batch: its id (its folder in OUTDIR), where it is and how to port it."""

    id: str
    checkpoint: str
    targets: tuple
    options: Options = Options()
    error: str = ""  # why it cannot be converted, found while looking for it


@dataclasses.dataclass(frozen=True)
class Job:
    """What a worker needs for one model."""

    model: Model
    outdir: str
    verify: bool = False
    force: bool = False
    device: str = "auto"


@dataclasses.dataclass(frozen=True)
class TargetState:
    """One target's entry in a model's ``state.json``: the output's key and what writing it found.

    ``size`` and what follows it are set once the output was written (``written``); ``verified`` and
    ``max_error`` once it was verified.
    """

    status: Status
    key: str
    output: str | None = None  # the file's name in the model's folder
    size: int | None = None
    mtime_ns: int | None = None
    bytes_read: int | None = None
    verified: bool | None = None
    max_error: float | None = None
    decisions: dict | None = None
    skipped: dict | None = None
    notes: tuple = ()
    reason: str = ""
    detail: str = ""  # the traceback of an unexpected error

    @property
    def written(self):
        return self.size is not None

    def to_dict(self):
        data = {"status": self.status.value, "key": self.key}
        if self.output is not None:
            data["output"] = self.output
        if self.written:
            data.update(size=self.size, mtime_ns=self.mtime_ns, bytes_read=self.bytes_read, verified=self.verified,
                        max_error=self.max_error, decisions=self.decisions, skipped=self.skipped or {},
                        notes=list(self.notes))
        if self.reason:
            data["reason"] = self.reason
        if self.detail:
            data["detail"] = self.detail
        return data

    @classmethod
    def from_dict(cls, data):
        """The entry of a state file; ValueError, KeyError or TypeError for one no batch wrote."""
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        values["status"] = Status(data["status"])
        values["notes"] = tuple(data.get("notes") or ())
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class State:
    """A model's ``state.json``: what its outputs were made from, and an entry per target."""

    version: str
    checkpoint: str
    architecture: str | None
    content: str  # the checkpoint's content hash
    files: dict  # path -> {size, mtime_ns, digest} of the checkpoint's files
    table_path: str | None  # the mapping table's file, None where no table was found
    table_digest: str
    targets: dict  # target -> TargetState

    def with_target(self, target, entry):
        return dataclasses.replace(self, targets={**self.targets, target: entry})

    def to_dict(self):
        return {"version": self.version, "checkpoint": self.checkpoint, "architecture": self.architecture,
                "content": self.content, "files": self.files,
                "mapping": {"path": self.table_path, "digest": self.table_digest},
                "targets": {target: entry.to_dict() for target, entry in self.targets.items()}}

    @classmethod
    def from_dict(cls, data):
        """A state file's contents; an entry that cannot be read is left out (its target is done again)."""
        targets = {}
        for target, entry in (data.get("targets") or {}).items():
            try:
                targets[target] = TargetState.from_dict(entry)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        mapping = data.get("mapping") or {}
        return cls(data.get("version"), data.get("checkpoint"), data.get("architecture"), data.get("content"),
                   data.get("files") or {}, mapping.get("path"), mapping.get("digest"), targets)


EMPTY_STATE = State(None, None, None, None, {}, None, None, {})


@dataclasses.dataclass(frozen=True)
class TargetRecord:
    """One target of a model in the report."""

    status: Status
    output: str | None = None  # relative to OUTDIR
    max_error: float | None = None
    seconds: float = 0.0
    reason: str = ""
    decisions: dict | None = None
    skipped: dict | None = None
    notes: tuple = ()
    bytes_read: int | None = None

    def to_dict(self):
        return {"status": self.status.value, "output": self.output, "max_error": self.max_error,
                "seconds": round(self.seconds, 3), "reason": self.reason, "decisions": self.decisions,
                "skipped": self.skipped or {}, "notes": list(self.notes), "bytes_read": self.bytes_read}


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """One model in the report: its status over its targets, and what was decided from its checkpoint."""

    id: str
    checkpoint: str
    architecture: str | None
    status: Status
    seconds: float = 0.0
    max_error: float | None = None
    reason: str = ""
    decisions: dict | None = None
    skipped: dict | None = None
    targets: dict = dataclasses.field(default_factory=dict)  # target -> TargetRecord

    @property
    def ok(self):
        return self.status in (Status.OK, Status.UP_TO_DATE)

    def to_dict(self):
        return {"id": self.id, "checkpoint": str(self.checkpoint), "architecture": self.architecture,
                "status": self.status.value, "seconds": round(self.seconds, 3), "max_error": self.max_error,
                "reason": self.reason, "decisions": self.decisions, "skipped": self.skipped or {},
                "targets": {target: record.to_dict() for target, record in self.targets.items()}}
