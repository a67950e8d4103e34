"""The per-model flags of ``convert``, ``verify`` and ``batch``: declared once, read into one ``Options``.

``option_flags(*fields)`` adds the flags of those ``converter.options.Options`` fields to a command;
``pop_options`` reads the parsed values back into the fields. This is the one place where a flag's
spelling (``--no-top``, ``--lenient``, ``--keep-background``) meets its field (``include_top``,
``strict``, ``background``).
"""

import pathlib

import click

from converter import input_size, mapping, storage
from converter.errors import ConvertError
from converter.options import DTYPES, FLAGS, INPUT_LAYOUTS, Options


class Location(click.ParamType):
    """A local path (a ``pathlib.Path``) or an ``s3://``/``gs://`` URL (a ``storage.RemotePath``), kept intact."""

    name = "path"

    def convert(self, value, param, ctx):
        try:
            return storage.path(value)
        except ConvertError as error:
            self.fail(str(error), param, ctx)


LOCATION = Location()


def _declared(*declarations, **settings):
    # a click option kept as its arguments: a command may give it its own help (``option_flags(helps=)``)
    return declarations, settings


# field -> the click options that set it (declarations and settings), in the order --help lists them
CLICK_OPTIONS = {
    "arch": (_declared("--arch", help="Architecture (a built-in mapping table) instead of detecting it."),),
    "mapping": (_declared("--mapping", type=click.Path(path_type=pathlib.Path, dir_okay=False),
                          help="Your own mapping table (YAML)."),),
    "scope": (_declared("--scope", help="Which network, where a checkpoint holds several: its scope "
                                        "(FlowerNet, tower_1/InceptionV3). Default: the only one found."),),
    "ema": (_declared("--ema", is_flag=True, help="Use the /ExponentialMovingAverage shadows (as evaluation did)."),),
    "background": (
        _declared("--keep-background", is_flag=True,
                  help="Keep class 0 even at the released class count (1001 for Inception). By default TF-Slim's "
                       "background class is dropped only at that count; a fine-tune keeps every class."),
        _declared("--drop-background", is_flag=True,
                  help="Drop class 0 as background at any class count (a fine-tune on a dataset with one)."),
    ),
    "aux": (_declared("--no-aux", is_flag=True,
                      help="Leave out the auxiliary head (torch: aux_logits=False). By default it is kept where "
                           "the checkpoint has it."),),
    "input_size": (_declared("--input-size", metavar="H[xW]",
                             help="Input size the network runs at. Default: inferred from the checkpoint (sizes "
                                  "some layers were built for), else the architecture's."),),
    "include_top": (_declared("--no-top", is_flag=True,
                              help="Leave out the classifier (keras: include_top=False; torch: no fc, as timm's "
                                   "num_classes=0)."),),
    "dtype": (_declared("--dtype", type=click.Choice(DTYPES), help="Cast floating tensors on write."),),
    "strict": (_declared("--lenient", is_flag=True,
                         help="Skip (and list) variables no mapping row takes instead of failing."),),
    "opset": (_declared("--opset", type=int, help="onnx: the opset to write."),),
    "input_layout": (_declared("--input-layout", type=click.Choice(INPUT_LAYOUTS),
                               help="onnx: layout of the graph input."),),
    "outputs": (_declared("--outputs", help="onnx: comma-separated end points to expose as graph outputs."),),
    "external_data": (_declared("--external-data", is_flag=True,
                                help="onnx: weights in a file beside the model (OUTPUT.data), as models past 2 GB "
                                     "need."),),
}
# batch's --ema: alone, the shadows for every model; ``--ema auto``, for the models whose checkpoint has them
EMA_AUTO_OPTION = click.option(
    "--ema", is_flag=False, flag_value="true", type=click.Choice(["true", "auto"]), metavar="[auto]",
    help="Use the /ExponentialMovingAverage shadows; --ema auto: where a checkpoint has them (said per model).")
# field -> the names of the click parameters that set it
PARAMS = {"arch": ("arch",), "mapping": ("mapping",), "scope": ("scope",), "ema": ("ema",),
          "background": ("keep_background", "drop_background"), "aux": ("no_aux",), "input_size": ("input_size",),
          "include_top": ("no_top",), "dtype": ("dtype",), "strict": ("lenient",), "opset": ("opset",),
          "input_layout": ("input_layout",), "outputs": ("outputs",), "external_data": ("external_data",)}
ALL_FIELDS = tuple(FLAGS)


def option_flags(*fields, ema_auto=False, helps=None):
    """A decorator adding the flags of ``fields`` (default: every field) to a click command.

    ``ema_auto``: ``--ema [auto]`` (a fleet, where some checkpoints have shadows and some not);
    ``helps``: ``{field: help}`` where a command's flag means something more particular.
    """
    declared = []
    for field in fields or ALL_FIELDS:
        if field == "ema" and ema_auto:
            declared.append(EMA_AUTO_OPTION)
            continue
        for declarations, settings in CLICK_OPTIONS[field]:
            help_text = (helps or {}).get(field, settings.get("help"))
            declared.append(click.option(*declarations, **dict(settings, help=help_text)))

    def decorate(command):
        for option in reversed(declared):
            command = option(command)
        return command

    return decorate


def pop_options(values, *fields, given_only=False):
    """The ``Options`` fields of a command's parsed ``values`` (removed from them), as ``{field: value}``.

    ``given_only``: only the fields whose flags were given on the command line (``verify`` takes the
    rest from what the ports record).
    """
    context = click.get_current_context(silent=True)
    found = {}
    for field in fields or ALL_FIELDS:
        params = {name: values.pop(name) for name in PARAMS[field]}
        if given_only and context is not None and all(
                context.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT) for name in params):
            continue
        found[field] = _value(field, **params)
    return found


def options_from(values, *fields):
    """``Options`` of a command's parsed ``values`` (removed from them)."""
    try:
        return Options(**pop_options(values, *fields))
    except ConvertError as error:
        raise click.UsageError(str(error)) from None


def _value(field, **params):
    # the field's value from the flags that set it
    if field == "background":
        if params["keep_background"] and params["drop_background"]:
            raise click.UsageError("--keep-background and --drop-background contradict each other; pass one")
        return mapping.BACKGROUND_KEEP if params["keep_background"] else (
            mapping.BACKGROUND_DROP if params["drop_background"] else mapping.BACKGROUND_AUTO)
    (value,) = params.values()
    if field in ("aux", "include_top", "strict"):
        return not value
    if field == "ema":
        return {"true": True, "auto": "auto"}.get(value, bool(value))
    if field == "mapping":
        return str(value) if value else None
    if field == "input_size" and value is not None:
        try:
            return input_size.parse(value)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--input-size") from None
    if field == "outputs" and value is not None:
        return Options.from_text(field, value)
    if field == "external_data":
        return bool(value)
    return value
