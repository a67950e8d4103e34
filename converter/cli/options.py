"""The options ``convert``, ``verify`` and ``batch`` share: declared once, with one meaning and one help text.

``model_options`` adds them to a command; ``plan_options`` turns the parsed values into the keyword
arguments of ``converter.convert.convert`` (and ``verify``, and a batch model's options).
"""

import pathlib

import click

from converter import input_size, mapping, storage
from converter.errors import ConvertError


class Location(click.ParamType):
    """A local path (a ``pathlib.Path``) or an ``s3://``/``gs://`` URL (a ``storage.RemotePath``), kept intact."""

    name = "path"

    def convert(self, value, param, ctx):
        try:
            return storage.path(value)
        except ConvertError as error:
            self.fail(str(error), param, ctx)


LOCATION = Location()

SHARED = (
    click.option("--arch", help="Architecture (a built-in mapping table) instead of detecting it."),
    click.option("--mapping", "mapping_path", type=click.Path(path_type=pathlib.Path, dir_okay=False),
                 help="Your own mapping table (YAML)."),
    click.option("--scope", help="Which network, where a checkpoint holds several: its scope "
                                 "(FlowerNet, tower_1/InceptionV3). Default: the only one found."),
    click.option("--ema", is_flag=True, help="Use the /ExponentialMovingAverage shadows (as evaluation did)."),
    click.option("--keep-background", is_flag=True,
                 help="Keep class 0 even at the released class count (1001 for Inception). By default TF-Slim's "
                      "background class is dropped only at that count; a fine-tune keeps every class."),
    click.option("--drop-background", is_flag=True,
                 help="Drop class 0 as background at any class count (a fine-tune on a dataset with one)."),
    click.option("--no-aux", is_flag=True,
                 help="Leave out the auxiliary head (torch: aux_logits=False). By default it is kept where the "
                      "checkpoint has it."),
    click.option("--input-size", metavar="H[xW]",
                 help="Input size the network runs at. Default: inferred from the checkpoint (sizes some layers "
                      "were built for), else the architecture's."),
)


# batch's --ema: alone, the shadows for every model; ``--ema auto``, for the models whose checkpoint has them
EMA_AUTO_OPTION = click.option(
    "--ema", is_flag=False, flag_value="true", type=click.Choice(["true", "auto"]), metavar="[auto]",
    help="Use the /ExponentialMovingAverage shadows; --ema auto: where a checkpoint has them (said per model).")

# where --ema sits in SHARED
EMA_INDEX = 3


def model_options(command):
    """Add the shared options to a click command."""
    for option in reversed(SHARED):
        command = option(command)
    return command


def batch_model_options(command):
    """The shared options with ``--ema [auto]`` for a fleet, where some checkpoints have shadows and some not."""
    for option in reversed(SHARED):
        command = (EMA_AUTO_OPTION if option is SHARED[EMA_INDEX] else option)(command)
    return command


def plan_options(arch=None, mapping_path=None, scope=None, ema=False, keep_background=False, drop_background=False,
                 no_aux=False, input_size_text=None):
    """The shared options as keyword arguments of ``convert``: arch, mapping, scope, ema, background, aux, input_size."""
    if keep_background and drop_background:
        raise click.UsageError("--keep-background and --drop-background contradict each other; pass one")
    background = mapping.BACKGROUND_KEEP if keep_background else (
        mapping.BACKGROUND_DROP if drop_background else mapping.BACKGROUND_AUTO)
    size = None
    if input_size_text is not None:
        try:
            size = input_size.parse(input_size_text)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--input-size") from None
    ema = {"true": True, "auto": "auto"}.get(ema, bool(ema))
    return {"arch": arch, "mapping": str(mapping_path) if mapping_path else None, "scope": scope, "ema": ema,
            "background": background, "aux": False if no_aux else None, "input_size": size}


def pop_plan_options(values):
    """``plan_options`` of a command's parsed ``values``, removing them from ``values``."""
    names = ("arch", "mapping_path", "scope", "ema", "keep_background", "drop_background", "no_aux")
    picked = {name: values.pop(name) for name in names}
    return plan_options(**picked, input_size_text=values.pop("input_size"))
