"""One checkpoint to one target file: read, plan, check everything, then write atomically.

``convert`` is what ``ckpt-convert --from slim --to TARGET`` runs. The writer for a target and an
output suffix comes from the format registry (``converter.backends``): a ``Writer`` whose ``check``
(what only that format constrains) runs before anything is written and on a dry run, and whose
``write(plan, read, path, *, dtype=None, **options)`` gets ``read(name) -> np.ndarray`` for a checkpoint
variable and a temporary ``path`` that is renamed into place only once it returns.
"""

import dataclasses
import pathlib
import time

# imported as ``tables``: ``convert``'s argument ``mapping`` (a user's table) would shadow the module
from converter import mapping as tables
from converter import backends, provenance, storage
from converter._atomic import atomic_output
from converter._text import counted
from converter.checkpoint import open_checkpoint
from converter.errors import CheckpointError, ConvertError, GraphError, MappingError, OutputExistsError
from converter.options import EMA_AUTO, FLAGS, TARGET_OPTIONS, Options

# the file beside a model that holds its weights in ONNX's external-data layout (--external-data)
EXTERNAL_DATA_SUFFIX = ".data"
DEFAULT_SUFFIXES = {"torch": ".pth", "keras": ".h5", "onnx": ".onnx"}
SOURCE_FORMATS = ("slim",)
# the suffix TF-Slim checkpoints conventionally carry; an output replaces it rather than extending it
CHECKPOINT_SUFFIX = ".ckpt"
TF2_FORMAT = "tf2"


@dataclasses.dataclass
class ConvertResult:
    """What a conversion wrote (or, for a dry run, would write) and what it left out."""

    checkpoint: pathlib.Path
    output: pathlib.Path
    target: str
    architecture: str
    plan: tables.Plan
    tensors: int
    bytes: int  # size of the written file; 0 for a dry run
    seconds: float
    dry_run: bool
    bytes_read: int = 0  # read from the checkpoint's files: its index and the tensors the plan takes
    bytes_stored: int = 0  # held by the checkpoint's files
    notes: list = dataclasses.field(default_factory=list)  # what the output does not load into, and why

    @property
    def skipped(self):
        """Checkpoint variables left out on purpose: reason -> names (EMA shadows, optimizer slots...)."""
        return self.plan.skipped

    def skipped_counts(self):
        """Reason -> how many variables were left out for it."""
        return {reason: len(names) for reason, names in self.skipped.items()}

    def to_dict(self):
        """The result as data (``convert --json``): what was written, decided, skipped and recorded."""
        return {
            "checkpoint": str(self.checkpoint),
            "output": str(self.output),
            "target": self.target,
            "architecture": self.architecture,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "bytes_read": self.bytes_read,
            "bytes_stored": self.bytes_stored,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "decisions": self.plan.to_dict(),
            "skipped": {reason: sorted(names) for reason, names in self.skipped.items()},
            "notes": list(self.notes),
            "provenance": {key: value for key, value in self.plan.record.items() if key != "source_shapes"},
        }


def third_party_notes(plan):
    """Third-party models (``targets.<target>.<model>``) a plan's output does not load into, and why.

    A model's ``dims`` (``{layer: {dim: size}}``) are the sizes it builds; a checkpoint trained at
    another input size (a smaller auxiliary kernel) or width binds others.
    """
    notes = []
    spec = plan.table.targets.get(plan.target)
    for name, model in (spec.third_party if spec is not None else {}).items():
        if not model.dims:
            continue
        mismatches = tables.dims_mismatches(plan, model.dims)
        if mismatches:
            optional = plan.table.group_layers(spec.optional)
            fix = f"; convert with --no-aux for {name}" if set(mismatches) <= optional else ""
            notes.append(f"loads into the exact module, not {name}'s {model.model}: "
                         f"{'; '.join(mismatches.values())}{fix}")
    return notes


def writer_for(target, output):
    """The ``backends.Writer`` for ``target`` and ``output``'s suffix; ConvertError naming the known ones."""
    return backends.get(target, output, storage.path(output).name).writer()


def target_of(output):
    """The target whose writer takes ``output``'s suffix (the longest that matches), or None."""
    found = backends.by_name(output)
    return found.target if found is not None else None


def check_target_options(target, options):
    """Refuse the writer options of ``options`` (an ``Options``) that ``target`` does not take, naming their flags."""
    refused = options.refused_for(target)
    if refused:
        named = [name for name, flag in FLAGS.items() if flag in refused]
        takers = sorted({t for name in named for t, taken in TARGET_OPTIONS.items() if name in taken})
        raise ConvertError(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to the {target} "
                           f"target (only {', '.join(takers) or 'none'}); drop {'it' if len(refused) == 1 else 'them'}")


def default_output(checkpoint_path, target):
    """Where the output goes when none is given: beside the checkpoint, ``model.ckpt`` -> ``model.pth``."""
    path = storage.path(checkpoint_path)
    suffix = DEFAULT_SUFFIXES[target]
    if path.name.endswith(CHECKPOINT_SUFFIX):
        return path.with_name(path.name[: -len(CHECKPOINT_SUFFIX)] + suffix)
    return path.with_name(path.name + suffix)


def table_for(names, arch=None, mapping=None, *, scope=None, checkpoint="the checkpoint"):
    """The mapping table for a checkpoint: a user's (``mapping``), a named one (``arch``), or the one detected.

    Detection finds a built-in table's network under any scope or outer prefix; ``scope`` picks one
    where the checkpoint holds several. Where none fits, the table is recovered from the ``.meta``
    graph beside the checkpoint (``mapping`` may also name a ``.meta`` file). Raises ``MappingError``
    saying what was found and the flag to pass, ``GraphError`` where the graph's network cannot be recovered.
    """
    from converter.metagraph import recover

    if mapping is not None:
        if str(mapping).endswith(recover.META_SUFFIX):
            return recover.recover_table(mapping)
        return tables.load_table(mapping)
    if arch is not None:
        return tables.load_table(arch)
    if not tables.networks(names):
        # no built-in table fits: the graph TF1's Saver wrote beside the checkpoint holds the network
        meta = recover.meta_beside(checkpoint)
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        if meta is not None:
            try:
                return recover.recover_table(meta)
            except GraphError as error:
                raise GraphError(
                    f"{checkpoint}: no mapping table ({', '.join(tables.builtin_tables())}) fits this checkpoint "
                    f"(its {counted(len(names), 'variable')} unmapped: {shown}), and from {meta.name} "
                    f"{str(error).partition(': ')[2]}"
                ) from None
        raise MappingError(
            f"{checkpoint}: no mapping table ({', '.join(tables.builtin_tables())}) fits this checkpoint "
            f"and no {recover.META_SUFFIX} graph lies beside it; its {counted(len(names), 'variable')} unmapped: {shown}; "
            f"pass --arch or --mapping my_table.yaml"
        )
    return tables.load_table(tables.locate(names, scope=scope, path=checkpoint).architecture)


def convert(checkpoint, to=None, output=None, *, options=None, force=False, dry_run=False, **fields):
    """Convert a TF-Slim checkpoint to a ``to`` file (``torch``, ``keras`` or ``onnx``), checking everything first.

    Args:
        checkpoint: a checkpoint prefix, ``.index`` file, V1 file or directory.
        to: ``torch``, ``keras`` or ``onnx``; by default the target whose suffix ``output`` has, else ``torch``.
        output: the file to write; default beside the checkpoint with the target's suffix.
        options: an ``Options`` (how to port); ``fields``: its fields as keyword arguments, over ``options``
            (``arch``, ``mapping``, ``scope``, ``ema`` (True, False or ``"auto"``: the notes say which was
            used), ``background``, ``aux``, ``include_top``, ``input_size``, ``dtype``, ``strict``, and the
            ONNX writer's ``opset``, ``input_layout``, ``outputs``, ``external_data``).
        force: overwrite an existing output; ``dry_run``: plan and check, write nothing.

    Returns:
        a ``ConvertResult``; raises a ``ConvertError`` subclass, having written nothing, on any problem.
    """
    start = time.perf_counter()
    options = Options.of(options, **fields)
    if to is None:
        to = (target_of(output) if output is not None else None) or "torch"
    check_target_options(to, options)
    with open_checkpoint(checkpoint) as ckpt:
        if ckpt.format == TF2_FORMAT:
            raise CheckpointError(
                f"{ckpt.path}: a TF2 object-based checkpoint (tf.train.Checkpoint / Keras), not a TF-Slim one; "
                f"load it with TensorFlow and save the model with its own exporter instead"
            )
        names = ckpt.names()
        notes = []
        if options.ema == EMA_AUTO:
            options = dataclasses.replace(options, ema=any(name.endswith(tables.EMA_SUFFIX) for name in names))
            notes.append("EMA shadows used (--ema auto)" if options.ema else
                         "no EMA shadows in the checkpoint: raw values used (--ema auto)")
        table = table_for(names, options.arch, options.mapping, scope=options.scope, checkpoint=ckpt.path)
        tables.locate(names, table, scope=options.scope, path=ckpt.path)  # names the file where the network is missing
        infos = [ckpt.info(name) for name in names]
        shapes = {info.name: info.shape for info in infos}
        plan = tables.plan(shapes, table, to, **options.plan_arguments(),
                           dtypes={info.name: info.dtype for info in infos})
        target = storage.path(output) if output is not None else default_output(ckpt.path, to)
        writer = writer_for(to, target)
        writer_options = options.writer_arguments()
        writer.check(plan, target, dtype=options.dtype, **writer_options)
        size = 0
        if dry_run and target.exists() and not force:
            raise OutputExistsError(f"{target}: already exists; pass --force to overwrite it")
        if not dry_run:
            plan.record = provenance.make(plan, checkpoint=ckpt.path, options=options)
            with atomic_output(target, force) as temp:
                ckpt.prefetch([entry.source for entry in plan.entries if entry.source is not None])
                if writer_options.get("external_data"):  # ONNX weights in a file beside the model, named after it
                    writer_options["external_data"] = f"{target.name}{EXTERNAL_DATA_SUFFIX}"
                    with atomic_output(target.parent / writer_options["external_data"], force) as data:
                        writer.write(plan, ckpt.read, temp, dtype=options.dtype, external_data_path=data, **writer_options)
                        size = data.stat().st_size
                else:
                    writer.write(plan, ckpt.read, temp, dtype=options.dtype, **writer_options)
                size += temp.stat().st_size
    return ConvertResult(
        checkpoint=storage.path(ckpt.path),
        output=target,
        target=to,
        architecture=table.architecture,
        plan=plan,
        tensors=len(plan.entries),
        bytes=size,
        seconds=time.perf_counter() - start,
        dry_run=dry_run,
        notes=notes + third_party_notes(plan),
        bytes_read=ckpt.bytes_read,
        bytes_stored=ckpt.bytes_stored,
    )
