"""The output formats: for each ``(target, suffix)``, the writer that makes the file and the runtime that runs it.

Writers and runtimes are found here, by target and file suffix, and nowhere else. Each is loaded on
first use (its module may need a framework from an optional extra) and satisfies its protocol:
``Writer`` (``check`` what only the format constrains, then ``write``), ``Runtime`` (``describe``,
``load_weights``, ``run``; each ``converter.runtimes`` module is one). A format is added with
``register``; registering a key twice raises, and a failed lookup names the full key and the known ones.
"""

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from converter.errors import ConvertError


@runtime_checkable
class Writer(Protocol):
    """Writes a plan's tensors as one file format; ``check`` runs first, also on a dry run."""

    def check(self, plan, path, *, dtype=None, **options):
        """Raise ``ConvertError`` for options or a plan this format cannot take; write nothing."""

    def write(self, plan, read, path, *, dtype=None, **options):
        """Write ``plan``'s tensors, read with ``read(name) -> np.ndarray``, to ``path`` (a temporary file)."""


@runtime_checkable
class Runtime(Protocol):
    """Loads and runs one target's ported files for the verifier."""

    def describe(self, path, **options):
        """What runs the file, for the report."""

    def load_weights(self, path, plan):
        """Every tensor of the file under its key, in the file's dtype."""

    def run(self, path, plan, images, *, device="cpu", **options):
        """``({end point: np.ndarray}, device)`` on ``images`` (NHWC), feature maps NHWC."""


@dataclasses.dataclass(frozen=True)
class FileWriter:
    """A ``Writer`` made of a format's two functions."""

    check: Callable
    write: Callable


@dataclasses.dataclass(frozen=True)
class Format:
    """One output format: its target, file suffix, the pip extra it needs, and how to load its writer and runtime."""

    target: str
    suffix: str
    extra: str
    load_writer: Callable[[], Writer]
    load_runtime: Callable[[], Runtime]

    def writer(self):
        """The format's ``Writer``; ``ConvertError`` naming the extra to install where its module cannot load."""
        return self._load(self.load_writer, Writer, f"the {self.target} target is not available")

    def runtime(self):
        """The format's ``Runtime``; ``ConvertError`` naming the extra to install where its module cannot load."""
        return self._load(self.load_runtime, Runtime, f"running {self.suffix} files is not available")

    def _load(self, load, protocol, what):
        try:
            found = load()
        except ImportError as error:
            raise ConvertError(f"{what} ({error}); install it with: pip install 'ckpt-convert[{self.extra}]'") \
                from None
        if not isinstance(found, protocol):
            raise TypeError(f"format {self.target} {self.suffix}: {found!r} is not a {protocol.__name__}")
        return found


FORMATS = {}  # (target, suffix) -> Format


def register(found):
    """Add a ``Format``; a ``(target, suffix)`` registered twice raises ``ValueError``."""
    key = (found.target, found.suffix)
    if key in FORMATS:
        raise ValueError(f"format {key} is registered twice")
    FORMATS[key] = found
    return found


def targets():
    """Every target with a format, in registration order."""
    return list(dict.fromkeys(target for target, _ in FORMATS))


def suffixes(target=None):
    """The suffixes of ``target``'s formats (of every format without one), in registration order."""
    return [suffix for (t, suffix) in FORMATS if target is None or t == target]


def by_name(path, target=None):
    """The format whose suffix ``path``'s name ends with (the longest that matches), of ``target`` if given; or None."""
    name = pathlib.Path(str(path)).name
    matching = [found for (t, suffix), found in FORMATS.items() if name.endswith(suffix) and target in (None, t)]
    return max(matching, key=lambda found: len(found.suffix)) if matching else None


def get(target, path, name=None):
    """The format of ``target`` for ``path``'s suffix (or its file ``name``'s, for a bucket's object);
    ``ConvertError`` naming the target's suffixes otherwise."""
    if target not in targets():
        raise ConvertError(f"unknown target {target!r}; choose one of {', '.join(sorted(targets()))}")
    found = by_name(name or path, target)
    if found is None:
        raise ConvertError(f"{path}: the {target} target writes {', '.join(suffixes(target))} files; rename the output")
    return found


def _pth():
    from converter.writers import torch

    return FileWriter(torch.check, torch.save_pth)


def _safetensors():
    from converter.writers import torch

    return FileWriter(torch.check, torch.save_safetensors_state)


def _h5():
    from converter.writers import keras

    return FileWriter(keras.check, keras.save_h5)


def _weights_h5():
    from converter.writers import keras

    return FileWriter(keras.check, keras.save_weights_h5)


def _onnx():
    from converter.writers import onnx

    return FileWriter(onnx.check, onnx.save_onnx)


def _torch_runtime():
    from converter.runtimes import torch

    return torch


def _keras_runtime():
    from converter.runtimes import keras

    return keras


def _onnx_runtime():
    from converter.runtimes import onnx

    return onnx


register(Format("torch", ".pth", "torch", _pth, _torch_runtime))
register(Format("torch", ".safetensors", "torch", _safetensors, _torch_runtime))
register(Format("keras", ".h5", "keras", _h5, _keras_runtime))
register(Format("keras", ".weights.h5", "keras", _weights_h5, _keras_runtime))
register(Format("onnx", ".onnx", "onnx", _onnx, _onnx_runtime))
