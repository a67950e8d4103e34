"""How one model is ported: the per-model options, one name each in the CLI, the Python API and manifests.

``Options`` is what ``convert``, ``verify`` (through ``Options.plan_arguments``) and every model of a
batch take. Its field names are the Python API's keyword arguments and a manifest's fields; the
command line keeps its flag spellings (``FLAGS``: ``--no-top`` sets ``include_top``, ``--lenient``
``strict``, ``--no-aux`` ``aux``). A value given as text (a CSV manifest, a YAML scalar) is parsed
by ``Options.from_text`` with the same rules as the flags.
"""

import dataclasses
import os

from converter import input_size as sizes
from converter import mapping as tables
from converter.errors import ConvertError

# ``ema="auto"``: the shadows where the checkpoint has them, the raw values otherwise
EMA_AUTO = "auto"
# floating dtypes a port may be cast to (float32 is the checkpoint's own)
DTYPES = ("float16", "bfloat16")
INPUT_LAYOUTS = ("nchw", "nhwc")
# TF-Slim's name for the classifier end point, which a headless (include_top=False) port leaves out
HEAD_END_POINT = "Logits"
# field -> the command-line flag that sets it (``--keep-background``/``--drop-background`` set ``background``)
FLAGS = {
    "arch": "--arch",
    "mapping": "--mapping",
    "scope": "--scope",
    "ema": "--ema",
    "background": "--keep-background/--drop-background",
    "aux": "--no-aux",
    "include_top": "--no-top",
    "input_size": "--input-size",
    "dtype": "--dtype",
    "strict": "--lenient",
    "opset": "--opset",
    "input_layout": "--input-layout",
    "outputs": "--outputs",
    "external_data": "--external-data",
}
# the options that go to a target's writer, and the targets that take each; any other target refuses them
WRITER_FIELDS = ("include_top", "opset", "input_layout", "outputs", "external_data")
TARGET_OPTIONS = {"torch": ("include_top",), "keras": ("include_top",),
                  "onnx": ("include_top", "opset", "input_layout", "outputs", "external_data")}
# the options a port records and ``verify`` therefore takes from the file when they are not given
VERIFY_FIELDS = ("arch", "mapping", "scope", "ema", "background", "aux", "include_top", "input_size")
# the state key of a batch output holds these always, the others only where they differ from the default
# (so that a state written before an option existed still keys the same output)
KEYED_ALWAYS = ("arch", "mapping", "scope", "ema", "background", "aux", "input_size", "strict")
# earlier manifest spellings of two fields: (field, inverted)
MANIFEST_ALIASES = {"architecture": ("arch", False), "lenient": ("strict", True)}
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of one port; every field has the default a bare ``ckpt-convert`` uses.

    Attributes:
        arch: a built-in architecture instead of detecting it; ``mapping``: a user's table (YAML or
            ``.meta`` path); ``scope``: which network where the checkpoint holds several.
        ema: read the ``/ExponentialMovingAverage`` shadows; ``"auto"``: where the checkpoint has them.
        background: ``auto`` (drop TF-Slim's class 0 only at the table's released class count),
            ``keep`` or ``drop``.
        aux: keep the auxiliary head where the checkpoint has it (False leaves it out).
        include_top: keep the classifier (False: a headless port).
        input_size: ``(height, width)`` the network runs at; None: inferred from the checkpoint.
        dtype: ``float16`` or ``bfloat16`` for floating tensors; None keeps float32.
        strict: variables no mapping row takes are an error (False lists and skips them).
        opset, input_layout, outputs, external_data: ONNX only (the opset, ``nchw``/``nhwc``, extra
            end points as graph outputs, weights in a file beside the model).
    """

    arch: str | None = None
    mapping: str | None = None
    scope: str | None = None
    ema: bool | str = False
    background: str = tables.BACKGROUND_AUTO
    aux: bool = True
    include_top: bool = True
    input_size: tuple | None = None
    dtype: str | None = None
    strict: bool = True
    opset: int | None = None
    input_layout: str | None = None
    outputs: tuple | None = None
    external_data: bool = False

    def __post_init__(self):
        problems = []
        for field in ("aux", "include_top", "strict", "external_data"):
            if not isinstance(getattr(self, field), bool):
                problems.append(f"{field} is {getattr(self, field)!r}; use true or false")
        if self.ema not in (True, False, EMA_AUTO):
            problems.append(f"ema is {self.ema!r}; use true, false or auto")
        if self.background not in tables.BACKGROUND_RULES:
            problems.append(f"background is {self.background!r}; use {', '.join(tables.BACKGROUND_RULES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"dtype is {self.dtype!r}; use {', '.join(DTYPES)}")
        if self.input_layout is not None and self.input_layout not in INPUT_LAYOUTS:
            problems.append(f"input_layout is {self.input_layout!r}; use {', '.join(INPUT_LAYOUTS)}")
        if self.opset is not None and (isinstance(self.opset, bool) or not isinstance(self.opset, int)):
            problems.append(f"opset is {self.opset!r}; use a number")
        for field in ("arch", "mapping", "scope"):
            if getattr(self, field) is not None and not isinstance(getattr(self, field), str):
                problems.append(f"{field} is {getattr(self, field)!r}; use a name")
        if self.input_size is not None and not (
                isinstance(self.input_size, tuple) and len(self.input_size) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in self.input_size)):
            problems.append(f"input_size is {self.input_size!r}; use (height, width)")
        if self.outputs is not None and not (isinstance(self.outputs, tuple)
                                             and all(isinstance(name, str) for name in self.outputs)):
            problems.append(f"outputs is {self.outputs!r}; use end point names")
        if problems:
            raise ConvertError("; ".join(problems))

    @classmethod
    def of(cls, options=None, **fields):
        """``options`` (an ``Options``, a dict of its fields, or None: the defaults) with ``fields`` replaced.

        ``fields`` are the Python API's keyword arguments. Values take the API's forms and the forms the
        flags give: ``aux=None`` keeps the head as ``aux=True`` does, ``input_size=224`` or
        ``"224x192"``, ``outputs="Mixed_6e,Mixed_7c"``, ``mapping`` a path. ConvertError naming an
        unknown field or a bad value.
        """
        if isinstance(options, dict):
            options, fields = None, {**options, **fields}
        unknown = sorted(set(fields) - set(FLAGS))
        if unknown:
            raise ConvertError(f"unknown option {', '.join(unknown)}; known: {', '.join(FLAGS)}")
        base = options if options is not None else cls()
        if not fields:
            return base
        return dataclasses.replace(base, **{name: _api_value(name, value) for name, value in fields.items()})

    @classmethod
    def from_manifest(cls, row, *, where, base=None, folder=None):
        """The options a manifest row sets over ``base``: its fields other than ``path``, ``id``, ``targets``.

        Values may be text (CSV) or YAML scalars; an empty value keeps ``base``'s. ``mapping`` is
        relative to ``folder`` (the manifest's). ConvertError naming ``where`` and the field.
        """
        fields = {}
        for name, value in row.items():
            if value is None or value == "":
                continue
            field, inverted = MANIFEST_ALIASES.get(name, (name, False))
            if field not in FLAGS:
                raise ConvertError(f"{where}: unknown field {name}; known: {', '.join(MANIFEST_FIELDS)}")
            if isinstance(value, (dict, list, set)) and field != "outputs":
                raise ConvertError(f"{where}: {name} is {type(value).__name__}, where a single value belongs")
            try:
                parsed = cls.from_text(field, value)
            except ConvertError as error:
                raise ConvertError(f"{where}: {str(error).replace(field, name, 1)}") from None
            if field == "mapping" and folder is not None:
                parsed = os.path.abspath(folder / parsed)
            fields[field] = (not parsed) if inverted else parsed
        try:
            return dataclasses.replace(base if base is not None else cls(), **fields)
        except ConvertError as error:
            raise ConvertError(f"{where}: {error}") from None

    @staticmethod
    def from_text(field, value):
        """One field's value from text (or a YAML scalar), parsed as its flag parses it."""
        if field in ("aux", "include_top", "strict", "external_data"):
            return _boolean(field, value)
        if field == "ema":
            return EMA_AUTO if str(value).strip().lower() == EMA_AUTO else _boolean(field, value)
        if field == "input_size":
            try:
                return sizes.parse(value)
            except ValueError as error:
                raise ConvertError(str(error)) from None
        if field == "opset":
            try:
                return int(str(value))
            except ValueError:
                raise ConvertError(f"opset is {value!r}; use a number") from None
        if field == "outputs":
            return _names(field, value)
        return str(value)

    def plan_arguments(self):
        """The keyword arguments of ``converter.mapping.plan`` these options give."""
        return {"ema": self.ema, "background": self.background, "aux": None if self.aux else False,
                "drop": () if self.include_top else (HEAD_END_POINT,), "strict": self.strict, "scope": self.scope,
                "input_size": self.input_size}

    def writer_arguments(self):
        """The writer options given (those not at their default), as the writers take them."""
        given = {"include_top": None if self.include_top else False, "opset": self.opset,
                 "input_layout": self.input_layout, "outputs": self.outputs,
                 "external_data": self.external_data or None}
        return {name: value for name, value in given.items() if value is not None}

    def for_target(self, target):
        """These options less the writer options ``target`` does not take (a batch's opset beside a torch port)."""
        kept = TARGET_OPTIONS.get(target, ())
        return dataclasses.replace(self, **{name: DEFAULTS[name] for name in WRITER_FIELDS if name not in kept})

    def refused_for(self, target):
        """The flags of the writer options given that ``target`` does not take (empty when none)."""
        return [FLAGS[name] for name in self.writer_arguments() if name not in TARGET_OPTIONS.get(target, ())]

    def verify_arguments(self):
        """The options ``verify`` takes, as given (``ema="auto"`` left out: each port records what it used)."""
        chosen = {name: getattr(self, name) for name in VERIFY_FIELDS}
        if self.ema == EMA_AUTO:
            del chosen["ema"]
        return chosen

    def key_fields(self):
        """What decides a port's bytes, as data (JSON-able): a batch output's state key hashes it."""
        keyed = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in KEYED_ALWAYS and value == field.default:
                continue
            keyed[field.name] = _keyed(field.name, value)
        return keyed

    def changed(self):
        """``{field: value}`` of the fields not at their default."""
        return {name: getattr(self, name) for name in FLAGS if getattr(self, name) != DEFAULTS[name]}


DEFAULTS = {field.name: field.default for field in dataclasses.fields(Options)}
MANIFEST_FIELDS = ("path", "id", "targets", *FLAGS, *MANIFEST_ALIASES)


def _keyed(name, value):
    # the values a key hashes, as the first batch state files recorded them
    if name == "aux":
        return None if value else False
    if name == "include_top":
        return None if value else False
    if name == "input_size" and value is not None:
        return list(value)
    if name == "outputs" and value is not None:
        return list(value)
    return value


def _api_value(name, value):
    if name == "aux" and value is None:
        return True
    if name == "include_top" and value is None:
        return True
    if name == "mapping" and value is not None:
        return str(value)
    if name == "input_size" and value is not None and not isinstance(value, tuple):
        return Options.from_text(name, value) if isinstance(value, (str, int)) else tuple(value)
    if name == "outputs" and value is not None:
        return _names(name, value)
    if name == "ema" and isinstance(value, str):
        return Options.from_text(name, value)
    return value


def _names(field, value):
    if isinstance(value, str):
        return tuple(name.strip() for name in value.replace(";", ",").split(",") if name.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
        return tuple(value)
    raise ConvertError(f"{field} is {value!r}; use end point names")


def _boolean(field, value):
    if isinstance(value, bool):
        return value
    try:
        return BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ConvertError(f"{field} is {value!r}; use true or false") from None
