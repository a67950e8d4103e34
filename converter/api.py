"""The Python API: one function per command, with the command's options as keyword arguments.

    from converter.api import convert, inspect, dump, verify, batch, load, support

    result = convert("model.ckpt", output="model.pth")          # ckpt-convert model.ckpt -o model.pth
    report = verify("model.ckpt", ["model.pth"])                 # ckpt-convert verify model.ckpt model.pth
    net = load("model.pth")                                      # the exact TF-semantics torch module

Each name is imported on first use, so ``import converter.api`` loads neither torch nor TensorFlow.
Keyword names are the fields of ``converter.options.Options``, the same names a batch manifest's
fields have: ``--no-aux`` is ``aux=False``, ``--no-top`` is ``include_top=False``, ``--lenient`` is
``strict=False``, ``--keep-background``/``--drop-background`` are ``background="keep"``/``"drop"``,
``--arch`` is ``arch=``, ``--mapping`` is ``mapping=``; ``convert`` and ``batch`` also take them as
one ``options=Options(...)``. ``--to`` is ``to=`` (``targets=`` for ``batch``, which takes several).
"""

import importlib

__all__ = ["convert", "inspect", "dump", "verify", "batch", "load", "support"]

# public name -> "module:attribute" it is
_EXPORTS = {
    "convert": "converter.convert:convert",
    "inspect": "converter.cli.inspect:build_report",
    "verify": "converter.verify:verify",
    "batch": "converter.batch:run_batch",
    "load": "converter.nets.torch:load",
    "support": "converter.support:entries",
}


def dump(checkpoint, output, *, force=False, unmapped=False, arch=None, mapping=None, scope=None):
    """Export a checkpoint's variables under their own names to ``output`` (``.safetensors`` or ``.npz``).

    ``unmapped=True`` keeps only the variables no mapping row takes (``ckpt-convert dump --unmapped``).
    Returns ``{"output", "tensors", "bytes", "skipped"}``; tensors the format cannot hold are skipped by name.
    """
    import pathlib

    from converter import mapping as tables
    from converter._atomic import atomic_output
    from converter.checkpoint import open_checkpoint
    from converter.cli.dump import FORMATS
    from converter.convert import table_for
    from converter.errors import ConvertError

    output = pathlib.Path(output)
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise ConvertError(f"{output}: unknown output format {suffix or '(no suffix)'}; name it .safetensors or .npz")
    write, holds, _ = FORMATS[suffix]
    with atomic_output(output, force) as temp, open_checkpoint(checkpoint) as ckpt:
        wanted = list(ckpt)
        if unmapped:
            names = ckpt.names()
            table = table_for(names, arch, mapping, scope=scope, checkpoint=ckpt.path)
            plan = tables.plan({name: ckpt.info(name).shape for name in names}, table, next(iter(table.targets)),
                               strict=False, scope=scope)
            wanted = [name for reason in (tables.OUTSIDE, tables.UNMAPPED) for name in plan.skipped.get(reason, [])]
        infos = [ckpt.info(name) for name in wanted]
        kept = [info for info in infos if holds(info.dtype)]
        write(((info.name, ckpt.read(info.name)) for info in kept), temp)
    return {"output": str(output), "tensors": len(kept), "bytes": sum(info.nbytes for info in kept),
            "skipped": [info.name for info in infos if not holds(info.dtype)]}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'converter.api' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    found = getattr(importlib.import_module(module), attribute)
    globals()[name] = found
    return found


def __dir__():
    return sorted(__all__)
