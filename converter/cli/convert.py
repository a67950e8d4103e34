"""``ckpt-convert --from slim --to torch|keras|onnx CHECKPOINT``: one checkpoint to one target file."""

import click

from converter import convert as conversion
from converter import mapping as tables
from converter._text import counted, size
from converter.cli import debug_option, write_json
from converter.cli.options import LOCATION, option_flags, options_from

# skipped-variable reasons that are not a noun for the variables themselves
NOT_NOUNS = (tables.OUTSIDE, tables.UNMAPPED, "left out")


def _print_plan(result):
    plan = result.plan
    click.echo(f"plan: {result.checkpoint} ({result.architecture}) -> {result.output} ({result.target}), "
               f"{counted(result.tensors, 'tensor')}; nothing written (--dry-run)")
    width = max((len(entry.source or "") for entry in plan.entries), default=0)
    for entry in plan.entries:
        shape = "x".join(map(str, entry.shape)) or "scalar"
        if entry.source is None:
            how = f"fill {entry.fill} ({entry.dtype or 'float32'})"
            click.echo(f"  {'(fill)':<{width}} -> {entry.key} [{shape}] {how}")
            continue
        source_shape = "x".join(map(str, entry.source_shape)) or "scalar"
        how = entry.transform + (f", drop class {entry.drop_class[1]} on axis {entry.drop_class[0]}"
                                 if entry.drop_class else "")
        click.echo(f"  {entry.source:<{width}} -> {entry.key} [{source_shape} -> {shape}] {how}")
    _print_decisions(result)


def _skipped(count, reason):
    # "392 optimizer slots", "1 optimizer slot"; a reason that is no noun counts variables: "2 variables left out"
    if reason in NOT_NOUNS:
        return f"{counted(count, 'variable')} {reason}"
    return f"{count} {reason.removesuffix('s') if count == 1 else reason}"


def _print_decisions(result):
    for topic, sentence in result.plan.decisions():
        click.echo(f"{topic}: {sentence}")
    counts = result.skipped_counts()
    if counts:
        click.echo("skipped: " + ", ".join(_skipped(count, reason) for reason, count in counts.items()))
    for note in result.notes:
        click.echo(f"note: {note}")


@click.command("convert")
@click.argument("checkpoint", type=LOCATION)
@click.option("--from", "source_format", type=click.Choice(conversion.SOURCE_FORMATS), default="slim",
              show_default=True, help="Source checkpoint convention.")
@click.option("--to", "target", type=click.Choice(sorted(conversion.DEFAULT_SUFFIXES)),
              help="Target framework. Default: the one the -o suffix names, else torch.")
@click.option("-o", "--output", type=LOCATION,
              help="Output file (.pth or .safetensors; .h5 or .weights.h5; .onnx). Default: beside the checkpoint.")
@option_flags()
@click.option("--dry-run", is_flag=True, help="Print the plan (source -> target, shapes, transform); write nothing.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "json_path", is_flag=False, flag_value="-", metavar="FILE",
              help="Write the result (or the plan, with --dry-run) as JSON to FILE; '-' or no FILE: stdout.")
@debug_option
def command(checkpoint, source_format, target, output, dry_run, force, json_path, debug, **flags):
    """Convert TF-Slim CHECKPOINT (a prefix, .index file, V1 file or directory) to a TARGET file.

    CHECKPOINT and the output may be s3:// or gs:// URLs (the cloud extra): only the index and the
    byte ranges of the tensors the port takes are fetched, and the output is uploaded atomically.

    Everything is checked before anything is written; the output is written atomically and never
    overwritten without --force. What was decided from the checkpoint (its network's scope, the
    background class, optional heads, the input size, variables outside the network) is printed.
    """
    options = options_from(flags)
    result = conversion.convert(checkpoint, target, output, options=options, force=force, dry_run=dry_run)
    if json_path is not None:
        write_json(json_path, result.to_dict())
        if json_path == "-":
            return
    if dry_run:
        _print_plan(result)
        return
    click.echo(f"wrote {result.output}: {counted(result.tensors, 'tensor')}, {size(result.bytes)}, "
               f"{result.seconds:.2f} s ({result.architecture} -> {result.target}"
               f"{', ' + options.dtype if options.dtype else ''})")
    _print_decisions(result)
