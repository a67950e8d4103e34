"""``ckpt-convert dump``: export every variable of a checkpoint, unmapped, under its original name."""

import pathlib
import zipfile

import click
import numpy as np

from converter._atomic import atomic_output
from converter._text import counted, size
from converter.checkpoint import open_checkpoint
from converter.cli import debug_option
from converter.cli.options import LOCATION
from converter.errors import ConvertError
from converter.writers.safetensors import DTYPES as SAFETENSORS_DTYPES
from converter.writers.safetensors import save_safetensors

NPY_SUFFIX = ".npy"


def _write_npz(items, path):
    # one stored zip member per array, written as it is read (np.savez would reserve names like "file")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in items:
            with archive.open(name + NPY_SUFFIX, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _writable_by_npz(dtype):
    return dtype != object


def _writable_by_safetensors(dtype):
    return dtype in SAFETENSORS_DTYPES


# output suffix -> (writer, which dtypes it holds, what it cannot hold)
FORMATS = {
    ".safetensors": (lambda items, path: save_safetensors(items, path), _writable_by_safetensors, "safetensors"),
    ".npz": (_write_npz, _writable_by_npz, "npz without pickle"),
}


def _unmapped(ckpt, arch, mapping, scope):
    # what a lenient conversion leaves out as outside the network or unmapped in it
    from converter import mapping as tables
    from converter.convert import table_for

    names = ckpt.names()
    table = table_for(names, arch, mapping, scope=scope, checkpoint=ckpt.path)
    shapes = {name: ckpt.info(name).shape for name in names}
    plan = tables.plan(shapes, table, next(iter(table.targets)), strict=False, scope=scope)
    return [name for reason in (tables.OUTSIDE, tables.UNMAPPED) for name in plan.skipped.get(reason, [])]


@click.command("dump")
@click.argument("path", type=LOCATION)
@click.option(
    "-o", "--output", required=True, type=LOCATION,
    help="Output file: out.safetensors or out.npz.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--unmapped", is_flag=True,
              help="Only the variables no mapping row takes: those outside the network (a second head, a custom "
                   "layer) and unmapped ones in it, without their optimizer slots.")
@click.option("--arch", help="With --unmapped: the architecture instead of detecting it.")
@click.option("--mapping", type=click.Path(path_type=pathlib.Path, dir_okay=False),
              help="With --unmapped: your own mapping table (YAML).")
@click.option("--scope", help="With --unmapped: which network, where the checkpoint holds several.")
@debug_option
def command(path, output, force, unmapped, arch, mapping, scope, debug):
    """Export every variable of checkpoint PATH to OUTPUT under its original name.

    Tensors the format cannot hold (strings, and complex numbers in safetensors) are skipped with a
    note on stderr. The output is written atomically and never overwritten without --force.
    """
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise ConvertError(f"{output}: unknown output format {suffix or '(no suffix)'}; name it .safetensors or .npz")
    write, holds, label = FORMATS[suffix]
    with atomic_output(output, force) as temp, open_checkpoint(path) as ckpt:
        wanted = _unmapped(ckpt, arch, mapping, scope) if unmapped else list(ckpt)
        infos = [ckpt.info(name) for name in wanted]
        skipped = [info for info in infos if not holds(info.dtype)]
        kept = [info for info in infos if holds(info.dtype)]
        ckpt.prefetch([info.name for info in kept])
        write(((info.name, ckpt.read(info.name)) for info in kept), temp)
    if skipped:  # said once the output is written: a failed run prints its error alone
        kinds = sorted({"string" if info.dtype == object else str(info.dtype) for info in skipped})
        shown = ", ".join(info.name for info in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        click.echo(f"note: skipped {counted(len(skipped), '/'.join(kinds) + ' tensor')} that {label} cannot hold: {shown}",
                   err=True)
    total = sum(info.nbytes for info in kept)
    click.echo(f"wrote {counted(len(kept), 'tensor')} ({size(total)}) from {ckpt.path} to {output}", err=True)
