"""``ckpt-convert batch SRC... -o OUTDIR``: every checkpoint under SRC to each target, in parallel, resumable."""

import dataclasses
import os
import pathlib
import sys

import click

from converter import batch
from converter._text import counted
from converter.cli import debug_option
from converter.cli.options import LOCATION, option_flags, options_from
from converter.cli.quiet import quiet_tensorflow, silenced_stderr, verbosity_options
from converter.options import FLAGS, TARGET_OPTIONS


def _dry_run(sources, targets, options, all_steps):
    # what each model would become, checked as convert --dry-run checks it; nothing is written
    from converter.convert import convert
    from converter.errors import ConvertError

    models = batch.discover(sources, targets=batch.parse_targets(targets), options=options, all_steps=all_steps)
    click.echo(f"{counted(len(models), 'model')} found; nothing written (--dry-run)")
    for model in models:
        for target in model.targets:
            if model.error:
                click.echo(f"  {model.id}: {model.error}")
                break
            try:
                result = convert(model.checkpoint, target, f"{model.id}/{batch.output_name(model.id, target)}",
                                 options=model.options.for_target(target), dry_run=True, force=True)
                notes = "".join(f"; {note}" for note in result.notes)
                click.echo(f"  {model.id} -> {result.output} ({result.architecture}, "
                           f"{counted(result.tensors, 'tensor')}{notes})")
            except ConvertError as error:
                click.echo(f"  {model.id} -> {target}: fails: {' '.join(str(error).split())}")


class _Progress:
    """A bar on a terminal (tqdm), else one line per finished model; nothing but the summary with --quiet."""

    def __init__(self, quiet=False):
        self.total = 0
        self.done = 0
        self.running = []
        self.bar = None
        self.quiet = quiet
        # a copy of stderr taken now: the bar still reaches the terminal while TensorFlow's stderr is silenced
        self.stream = sys.stderr
        if sys.stderr.isatty() and not quiet:
            self.stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            self.tqdm = tqdm
        else:
            self.tqdm = None

    def __call__(self, event, value):
        if event == "found":
            self.total = value
            if self.tqdm is not None:
                self.bar = self.tqdm(total=value, unit="model", dynamic_ncols=True, file=self.stream)
        elif event == "started":
            self.running.append(value)
            self._show()
        elif event == "finished":
            self.done += 1
            if value.id in self.running:
                self.running.remove(value.id)
            if not self.quiet:
                self._write(self._line(value))
            if self.bar is not None:
                self.bar.update(1)
            self._show()

    def _line(self, record):
        targets = ", ".join(f"{t} {entry.status}" for t, entry in record.targets.items())
        error = f", max error {record.max_error:.1e}" if record.max_error is not None else ""
        reason = f": {record.reason}" if record.reason else ""
        return (f"[{self.done}/{self.total}] {record.id}: {record.status} ({targets}{error}) "
                f"{record.seconds:.1f} s{reason}")

    def _write(self, line):
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            click.echo(line)

    def _show(self):
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(self.running[-3:]), refresh=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@click.command("batch")
@click.argument("sources", nargs=-1, required=True, type=LOCATION)
@click.option("-o", "--output", "outdir", required=True, type=LOCATION,
              help="Output directory: OUTDIR/<model id>/<name>.<suffix>, report.json and report.md.")
@click.option("--to", "targets", default="torch", show_default=True,
              help="Comma-separated targets: torch, keras, onnx.")
@click.option("--verify", is_flag=True, help="Check every output against TF-Slim (the tf extra); record max error.")
@click.option("-j", "--jobs", type=click.IntRange(min=1),
              help="Models converted at once. Default: the CPU cores (Ray: the cluster's CPUs).")
@click.option("--all-steps", is_flag=True, help="Every step of a training directory, not only the latest.")
@click.option("--executor", type=click.Choice(batch.EXECUTORS), default="process", show_default=True,
              help="process: worker processes here; ray: tasks on a Ray cluster.")
@click.option("--address", help="ray: the cluster to join (auto, or ray://head:10001). Default: a local instance.")
@option_flags(ema_auto=True)
@click.option("--dry-run", is_flag=True, help="Find the models and check each one's plan; write nothing.")
@click.option("--force", is_flag=True, help="Replace output files that this batch did not write.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where --verify runs the reference and the outputs (as verify --device): auto takes a GPU "
                   "where one is present.")
@verbosity_options
@debug_option
def command(sources, outdir, targets, verify, jobs, all_steps, executor, address, dry_run, force, device, verbose,
            quiet, debug, **flags):
    """Convert every checkpoint under SOURCES to each target, in parallel; write OUTDIR/report.{json,md}.

    SOURCES are directories (searched recursively for V1 and V2 checkpoints; of a training run, the
    latest step) or .yaml/.csv manifests listing checkpoints with per-model options. SOURCES and
    OUTDIR may be s3:// or gs:// prefixes (the cloud extra); state and reports then live in the bucket. A rerun skips
    outputs that are up to date and redoes what changed or failed. Exit status 1 when any model failed.
    Each model is decided by its own checkpoint (scope, background class, heads, input size); the
    options below (those of convert) apply to every model that a manifest does not set otherwise.
    """
    options = options_from(flags)
    if options.mapping:
        options = dataclasses.replace(options, mapping=str(pathlib.Path(options.mapping).resolve()))
    chosen = batch.parse_targets(targets)
    for name in options.writer_arguments():
        takers = [target for target, taken in TARGET_OPTIONS.items() if name in taken]
        if not set(takers) & set(chosen):
            raise click.UsageError(f"{FLAGS[name]} applies to the {', '.join(takers)} target only, and --to is "
                                   f"{targets}; drop it")
    if dry_run:
        _dry_run(sources, targets, options, all_steps)
        return
    quiet_tensorflow(verbose)
    progress = _Progress(quiet)
    try:
        # the workers inherit the silenced stderr: TensorFlow's logging stays out of the report (unless -v)
        with silenced_stderr(verbose or not verify):
            report = batch.run_batch(sources, outdir, targets=targets, options=options, verify=verify, jobs=jobs,
                                     all_steps=all_steps, executor=executor, address=address, force=force,
                                     device=device, progress=progress)
    finally:
        progress.close()
    click.echo(f"{report.summary()}; report: {report.outdir / batch.REPORT_MARKDOWN}")
    raise click.exceptions.Exit(0 if report.ok else batch.EXIT_FAILED)
