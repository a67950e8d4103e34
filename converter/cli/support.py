"""``ckpt-convert list``: the support matrix (architectures, their targets and restrictions)."""

import click

from converter import support
from converter.cli import debug_option, write_json

TARGET_NAMES = {"torch": "PyTorch", "keras": "Keras", "onnx": "ONNX"}


def render_text(entries):
    """The matrix for a terminal: one block per architecture."""
    lines = []
    for found in entries:
        spec = found["input"]
        low, high = spec["range"]
        background = (f", class {found['background_class']} background (dropped at {found['classes']} only)"
                      if found["background_class"] is not None else "")
        lines.append(f"{found['architecture']}: input {spec['height']}x{spec['width']} in [{low:g}, {high:g}], "
                     f"{found['classes']} classes{background}; end points {', '.join(found['end_points'])}")
        for target, spec in found["targets"].items():
            models = ("; exact module (converter.api.load)" if target == "torch" else "") + (
                f"; loads into {', '.join(spec['models'])}" if spec["models"] else "")
            lines.append(f"  {TARGET_NAMES.get(target, target):<8} {', '.join(spec['suffixes'])}{models}")
        lines += [f"  - {note}" for note in found["restrictions"]]
    return "\n".join(lines)


@click.command("list")
@click.option("--json", "json_path", is_flag=False, flag_value="-", metavar="FILE",
              help="Write the matrix as JSON to FILE; '-' or no FILE: stdout.")
@debug_option
def command(json_path, debug):
    """List the architectures ckpt-convert ports, their targets (file suffixes, the models they load into)
    and restrictions: the support matrix, read from the built-in mapping tables.
    """
    found = support.entries()
    if json_path is not None:
        write_json(json_path, found)
        if json_path == "-":
            return
    click.echo(render_text(found))
