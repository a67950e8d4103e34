"""``ckpt-convert verify``: prove ported files equivalent to their TF-Slim checkpoint; exit 0 only if they are."""

import json

import click

from converter import oracle, storage
from converter._atomic import atomic_output
from converter.cli import debug_option, write_json
from converter.cli.options import option_flags, pop_options
from converter.cli.quiet import progress_printer, quiet_tensorflow, silenced_stderr, verbosity_options
from converter.options import VERIFY_FIELDS


@click.command("verify")
@click.argument("checkpoint", type=click.Path())
@click.argument("ported", nargs=-1, type=click.Path())
@option_flags(*VERIFY_FIELDS, helps={"include_top": "The ports have no classifier (convert --no-top)."})
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="An .npy batch (NHWC, in the network's input range) or an image; seeded random input otherwise.")
@click.option("--batch", default=2, show_default=True, help="Size of the seeded random batch.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where every backend and the reference run; auto takes a GPU where one is present.")
@click.option("--atol", type=float, default=None,
              help=f"Allowed max |delta| per end point, relative to max(1, max|reference|) [default: {oracle.ATOL:g}; "
                   f"for float16/bfloat16 ports {oracle.REDUCED_PRECISION_FACTOR:g} x unit roundoff x sqrt(network depth)].")
@click.option("--torch-model", type=click.Choice(["exact", "torchvision", "timm"]), default="exact",
              show_default=True, help="Run torch files in the exact TF-semantics module or a third-party model.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), is_flag=False, flag_value="-", metavar="FILE",
              help="Write the full report as JSON to FILE; '-' or no FILE: stdout (instead of the table).")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write a JUnit XML report.")
@verbosity_options
@debug_option
def command(checkpoint, ported, json_path, junit_path, verbose, quiet, debug, **options):
    """Check PORTED files (.pth, .safetensors, .h5, .weights.h5, .onnx) against CHECKPOINT.

    Runs TF-Slim's own network in TensorFlow (the `tf` extra) as the reference. With no PORTED file,
    converts the checkpoint to every target on the fly and checks each. Every tensor must equal the
    checkpoint's after the mapping's transform, bit for bit; every end point must agree within the
    bound. Each port's classes are matched to TF-Slim's by a correspondence derived from the two
    class counts and printed; a port that lacks or shifts a class fails. Exit status 0 means
    equivalent, 1 means a check failed, 2 a usage error (found before TensorFlow loads).

    Each port records how it was made (architecture, EMA, heads, top, input size): those options
    need no flag, and a flag given must agree with the files.
    """
    from converter import preflight

    # the options a port records (converter.provenance) go to verify only where given on the command line
    given = pop_options(options, *VERIFY_FIELDS, given_only=True)
    preflight.check_verify(ported, input_file=options["input_file"], torch_model=options["torch_model"],
                           reports=(json_path, junit_path))
    quiet_tensorflow(verbose)
    from converter.verify import verify

    progress = progress_printer(quiet)
    # TensorFlow's reader takes local files only: checkpoints and ports in a bucket are copied down first
    with silenced_stderr(verbose), storage.local_copies(checkpoint, ported) as (checkpoint, ported):
        report = verify(checkpoint, ported, **given, **options, progress=progress)
    if json_path == "-":
        write_json("-", report.to_dict())
    elif quiet:
        click.echo(report.table().splitlines()[-1])
    else:
        click.echo(report.table())
    for path, render in ((json_path, lambda: json.dumps(report.to_dict(), indent=2)), (junit_path, report.to_junit)):
        if path and path != "-":
            # a report is this command's own output: replaced on every run, never half-written
            with atomic_output(path, force=True) as temp:
                temp.write_text(render() + "\n")
    raise click.exceptions.Exit(0 if report.ok else 1)
