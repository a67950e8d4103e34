"""The ``ckpt-convert`` command line.

``ckpt-convert --from slim --to torch model.ckpt`` is the ``convert`` command; the other jobs are
subcommands (``inspect``, ``dump``, ...). Each command lives in its own module and is imported only
when it runs, so ``--help`` stays fast and no command pays for another's imports.
"""

import importlib
import os
import sys

import click

from converter import __version__
from converter.errors import ConvertError

# command name -> module defining a click command named ``command``
COMMANDS = {
    "convert": "converter.cli.convert",
    "inspect": "converter.cli.inspect",
    "dump": "converter.cli.dump",
    "verify": "converter.cli.verify",
    "batch": "converter.cli.batch",
    "map": "converter.cli.map",
    "list": "converter.cli.support",
}

DEFAULT_COMMAND = "convert"


class _Group(click.Group):
    """Lazily imported subcommands; arguments that name none of them go to ``convert``."""

    def list_commands(self, ctx):
        return [name for name, module in COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None or importlib.util.find_spec(module) is None:
            return None
        return importlib.import_module(module).command

    def parse_args(self, ctx, args):
        # `--debug` belongs to every command; it may also come before the command's name
        flags = [arg for arg in args if arg == "--debug"]
        rest = [arg for arg in args if arg != "--debug"]
        if rest and rest[0] not in COMMANDS and rest[0] not in ctx.help_option_names + ["--version"]:
            rest = [DEFAULT_COMMAND, *rest]
        if rest and rest[0] in COMMANDS:
            rest = [rest[0], *flags, *rest[1:]]
        return super().parse_args(ctx, rest)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt-convert")
def cli():
    """Port TF-Slim checkpoints to PyTorch, Keras and ONNX, and prove each port equivalent.

    \b
    ckpt-convert --from slim --to torch model.ckpt     convert one checkpoint
    ckpt-convert inspect model.ckpt                    list its variables by scope
    ckpt-convert dump model.ckpt -o raw.safetensors    export every variable, unmapped
    ckpt-convert verify model.ckpt model.pth           prove a port equivalent (exit 0) or not
    ckpt-convert batch models/ -o ported/ --to onnx    port every checkpoint under a folder
    ckpt-convert map model.ckpt -o net.yaml            recover a network's table from its .meta graph
    ckpt-convert list                                  architectures, targets and restrictions
    """


def write_json(path, data):
    """``data`` as JSON to ``path`` (atomically, replacing it), or to stdout where ``path`` is ``-``."""
    import json

    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    from converter._atomic import atomic_output

    with atomic_output(path, force=True) as temp:
        temp.write_text(text)


debug_option = click.option(
    "--debug", is_flag=True, envvar="CKPT_CONVERT_DEBUG", help="Show tracebacks for expected errors."
)


def main(argv=None):
    """Run the command line; expected errors print one line and exit non-zero."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args or bool(os.environ.get("CKPT_CONVERT_DEBUG"))
    try:
        # without standalone mode click returns a command's exit status instead of exiting
        status = cli.main(args=args, prog_name="ckpt-convert", standalone_mode=False)
    except ConvertError as error:
        if debug:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        # one line, like every other error: click's own form is a usage block, a hint and the message
        where = error.ctx.command_path if error.ctx is not None else "ckpt-convert"
        click.echo(f"error: {' '.join(error.format_message().split())} (see {where} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    if isinstance(status, int) and status:
        sys.exit(status)
