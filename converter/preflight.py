"""What ``verify`` checks before it imports TensorFlow: every argument, and the runtimes the run will need.

A usage error (a missing file, an unknown suffix, a runtime that a named file or option needs and
that is not installed) is one line and exit status 2, seconds before TensorFlow would have loaded.
Runtimes that only the ports converted on the fly would use are skipped with a reason instead
(``skipped_runtimes``).
"""

import importlib.util
import pathlib

from converter import storage
from converter.errors import ConvertError

# ported file suffix -> (modules its runtime imports, the pip extra that installs them)
RUNTIMES = {
    ".weights.h5": (("h5py", "keras"), "keras"),
    ".h5": (("h5py", "keras"), "keras"),
    ".pth": (("torch",), "torch"),
    ".safetensors": (("torch", "safetensors"), "torch"),
    ".onnx": (("onnx", "onnxruntime"), "onnx"),
}
# --torch-model choices that run a third-party model, and the modules they need
MODELS = {"torchvision": ("torchvision",), "timm": ("timm",)}
# the TF-Slim reference
REFERENCE = (("tensorflow", "tf_slim", "tf_keras"), "tf")
# what an input image needs, and the suffix of a numeric batch
IMAGE = (("PIL",), "Pillow")
NUMPY_SUFFIX = ".npy"
# the target each on-the-fly port is written for: its file name's suffix
TARGET_SUFFIXES = {"torch": ".pth", "keras": ".h5", "onnx": ".onnx"}


class UsageError(ConvertError):
    """An argument that cannot work, found before any work is done."""

    exit_code = 2


def missing(modules):
    """The modules of ``modules`` that are not installed (found without importing them)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(module)
    return absent


def suffix_of(path):
    """The known port suffix ``path`` ends with (the longest), or None."""
    name = str(path).rpartition("/")[2]  # a local path or a bucket's URL
    matching = [suffix for suffix in RUNTIMES if name.endswith(suffix)]
    return max(matching, key=len) if matching else None


def check_verify(ported=(), *, input_file=None, torch_model="exact", reports=()):
    """Raise ``UsageError`` for the first argument of ``verify`` that cannot work; return None otherwise.

    Args:
        ported: the files to check; each must exist, have a known suffix and its runtime installed.
        input_file: an ``.npy`` batch or an image (which needs Pillow).
        torch_model: ``torchvision`` or ``timm`` needs that package.
        reports: report files to write; each one's folder must exist.
    """
    absent = missing(REFERENCE[0])
    if absent:
        raise UsageError(f"verify runs TF-Slim in TensorFlow, and {', '.join(absent)} is not installed; "
                         f"install it with: pip install 'ckpt-convert[{REFERENCE[1]}]'")
    for path in map(storage.path, ported):  # a port in a bucket is checked there
        suffix = suffix_of(path)
        if suffix is None:
            raise UsageError(f"{path}: cannot verify this kind of file; known suffixes: {', '.join(RUNTIMES)}")
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        if not path.is_file():
            raise UsageError(f"{path}: not a file")
        modules, extra = RUNTIMES[suffix]
        absent = missing(modules)
        if absent:
            raise UsageError(f"{path}: checking a {suffix} file needs {', '.join(absent)}; "
                             f"install it with: pip install 'ckpt-convert[{extra}]'")
    if torch_model in MODELS:
        absent = missing(MODELS[torch_model])
        if absent:
            raise UsageError(f"--torch-model {torch_model} needs {', '.join(absent)}; pip install {' '.join(absent)}")
    if input_file is not None:
        path = pathlib.Path(input_file)
        if not path.is_file():
            raise UsageError(f"{path}: no such input file")
        if not path.name.endswith(NUMPY_SUFFIX) and missing(IMAGE[0]):
            raise UsageError(f"{path}: reading an image needs {IMAGE[1]}: pip install pillow (or pass an .npy batch)")
    for report in reports:
        if report is None or str(report) == "-":
            continue
        folder = pathlib.Path(report).parent
        if not folder.is_dir():
            raise UsageError(f"{report}: its folder {folder} does not exist; create it or write the report elsewhere")


def skipped_runtime(target, model=None):
    """Why an on-the-fly port of ``target`` (run in ``model``) cannot run here, or None where it can."""
    modules, extra = RUNTIMES[TARGET_SUFFIXES[target]]
    absent = missing(modules + MODELS.get(model, ()))
    if not absent:
        return None
    return f"{', '.join(absent)} not installed (pip install 'ckpt-convert[{extra}]'" + (
        f" {' '.join(MODELS[model])}" if model in MODELS else "") + ")"
