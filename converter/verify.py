"""Prove a port equivalent to its TF-Slim checkpoint.

Two kinds of check, each a line of the report:

- weights: every tensor of a ported file equals the checkpoint's after the mapping's transform, bit
  for bit (after the file's own dtype cast); missing and extra tensors are listed by name;
- outputs: TF-Slim's own network run by TensorFlow (``converter.reference``) and each ported
  artefact run by its runtime see the same input; every end point must agree within the bound of
  ``converter.oracle``.

The report passes only when every check passes; it renders as a table, JSON, or JUnit XML.
"""

import dataclasses
import json
import pathlib
import tempfile
import textwrap
import time
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from converter import mapping as mapping_module
from converter import backends, oracle
from converter import input_size as input_size_module
from converter.checkpoint import open_checkpoint
from converter.errors import ConvertError
from converter.options import HEAD_END_POINT, Options

# what `verify` converts on the fly when no ported file is given: (file name, runtime options, advisory).
# torchvision's Inception3 averages padding into its pools where TF-Slim does not: its drift is
# reported, but only decides the verdict when asked for (--torch-model torchvision). A target whose
# table says its model drifts (targets.<target>.drift: keras.applications' ResNetV2) is advisory too.
ON_THE_FLY = (
    ("model.pth", {"model": "exact"}, False),
    ("model.pth", {"model": "torchvision"}, True),
    ("model.h5", {}, False),
    ("model.onnx", {}, False),
)
DEVICES = ("auto", "cpu", "cuda")
# numbers an input batch may hold: floats, signed and unsigned integers
NUMERIC_KINDS = "fiu"
# an input image larger than a 64-megapixel photo is refused before it is decoded
MAX_IMAGE_PIXELS = 64_000_000
# the width long messages are folded to in the table
TABLE_WIDTH = 120
# the part of a third-party error quoted in a one-line message
ERROR_DETAIL_CHARS = 300


@dataclasses.dataclass
class Check:
    """One line of the report."""

    backend: str
    kind: str  # "weights" or "output"
    name: str  # tensor or end point
    passed: bool
    message: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Backend:
    """One ported artefact and the runtime that ran it."""

    name: str
    path: str
    target: str
    device: str = "cpu"
    advisory: bool = False  # reported, but does not decide the exit code
    note: str = ""
    classes: str = ""  # the class correspondence the port was checked under


@dataclasses.dataclass
class Report:
    """Everything ``verify`` found."""

    checkpoint: str
    architecture: str
    input: str
    atol: float
    reference_device: str = "cpu"
    backends: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    decisions: list = dataclasses.field(default_factory=list)  # what was read from the checkpoint
    phases: dict = dataclasses.field(default_factory=dict)  # seconds spent per phase, in order

    @property
    def ok(self):
        advisory = {b.name for b in self.backends if b.advisory}
        gating = [c for c in self.checks if c.backend not in advisory]
        return bool(gating) and all(c.passed for c in gating)

    def failures(self):
        return [c for c in self.checks if not c.passed]

    def to_dict(self):
        return {
            "ok": self.ok,
            "checkpoint": self.checkpoint,
            "architecture": self.architecture,
            "input": self.input,
            "atol": self.atol,
            "reference_device": self.reference_device,
            "seconds": round(self.seconds, 3),
            "phases": {phase: round(seconds, 3) for phase, seconds in self.phases.items()},
            "decisions": list(self.decisions),
            "backends": [dataclasses.asdict(b) for b in self.backends],
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def to_junit(self):
        """JUnit XML: a test suite per backend, a test case per check."""
        suites = ET.Element("testsuites", name="ckpt-convert verify", time=f"{self.seconds:.3f}")
        for backend in self.backends:
            checks = [c for c in self.checks if c.backend == backend.name]
            suite = ET.SubElement(
                suites, "testsuite", name=backend.name, tests=str(len(checks)),
                failures=str(sum(not c.passed for c in checks)),
            )
            for check in checks:
                case = ET.SubElement(suite, "testcase", classname=f"{backend.name}.{check.kind}", name=check.name)
                if not check.passed:
                    failure = ET.SubElement(case, "failure", message=check.message)
                    failure.text = json.dumps(check.metrics)
        return ET.tostring(suites, encoding="unicode")

    def table(self):
        """A concise human summary: weight checks per backend, then one row per end point."""
        lines = [f"checkpoint {self.checkpoint} ({self.architecture}); input {self.input}; "
                 f"reference TF-Slim on {self.reference_device}; bound {self.atol:g} x max(1, max|ref|)"]
        lines += [f"  {decision}" for decision in self.decisions]
        header = f"{'backend':<34} {'end point':<10} {'max|d|':>9} {'bound':>9} {'max rel':>9} {'cosine':>10} {'top1':>5} {'top5':>5}  status"
        for backend in self.backends:
            checks = [c for c in self.checks if c.backend == backend.name]
            weights = [c for c in checks if c.kind == "weights"]
            bad = [c for c in weights if not c.passed]
            note = f" [{backend.note}]" if backend.note else ""
            lines.append("")
            lines.append(f"{backend.name} on {backend.device}{' (advisory)' if backend.advisory else ''}{note}")
            if backend.classes:
                lines.append(f"  classes: {backend.classes}")
            if weights:
                lines.append(f"  weights: {len(weights) - len(bad)}/{len(weights)} bit-exact"
                             + "".join(f"\n    FAIL {c.name}: {c.message}" for c in bad[:20])
                             + (f"\n    ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
            outputs = [c for c in checks if c.kind == "output"]
            if outputs:
                lines.append("  " + header)
            for c in outputs:
                m = c.metrics
                if "max_abs" not in m:
                    # a long reason (every key a state dict lacks) folded at the table's width
                    lines.append(textwrap.fill(f"  {backend.name:<34} {c.name:<10} {c.message}", TABLE_WIDTH,
                                               subsequent_indent=" " * 4, break_on_hyphens=False))
                    continue
                top = [f"{m['top_k'].get(str(k), m['top_k'].get(k, float('nan'))):5.2f}" if m["top_k"] else "    -"
                       for k in oracle.TOP_K]
                status = "ok" if c.passed else ("DRIFT" if backend.advisory else "FAIL")
                lines.append(f"  {backend.name:<34} {c.name:<10} {m['max_abs']:9.2e} {m['bound']:9.2e} "
                             f"{m['max_rel']:9.2e} {m['cosine']:10.7f} {top[0]} {top[1]}  {status}")
        lines.append("")
        failed = len([c for c in self.failures() if not self._advisory(c)])
        lines.append("EQUIVALENT" if self.ok else f"NOT EQUIVALENT: {failed} failed check{'s' if failed != 1 else ''}")
        return "\n".join(lines)

    def _advisory(self, check):
        return any(b.advisory and b.name == check.backend for b in self.backends)


def format_of(path):
    """The ``backends.Format`` of a ported file, by suffix."""
    found = backends.by_name(path)
    if found is None:
        raise ConvertError(f"{path}: cannot verify this kind of file; known suffixes: {', '.join(backends.suffixes())}")
    return found


def make_input(table, *, input_file=None, batch=2, seed=0, size=None):
    """The batch every backend sees (NHWC float32 in the architecture's input range) and its description.

    ``size`` is ``(height, width)``, by default the table's.
    """
    spec = table.facts.input
    height, width = size or (spec.height, spec.width)
    shape = (height, width, spec.channels)
    low, high = spec.range
    if input_file is None:
        images = np.random.default_rng(seed).uniform(low, high, (batch, *shape)).astype(np.float32)
        return images, f"seeded uniform [{low}, {high}] batch {batch}x{'x'.join(map(str, shape))} (seed {seed})"
    path = pathlib.Path(input_file)
    if path.suffix == ".npy":
        images = _load_npy(path, shape)
        return images, f"{path.name} ({images.shape[0]}x{'x'.join(map(str, shape))})"
    mean = list(spec.mean) if spec.mean is not None else None
    scaled = f"RGB in [0, 255] minus the channel means {mean}" if mean else f"scaled to [{low}, {high}]"
    return (_load_image(path, shape, low, high, mean),
            f"image {path.name} (central crop 87.5%, bilinear {shape[0]}x{shape[1]}, {scaled})")


def _load_npy(path, shape):
    """An ``.npy`` batch as float32 NHWC, its header and size checked before its data is read."""
    try:
        # memory-mapped: a header too large, an object dtype or a file shorter than its header says
        # is refused before any data is read
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ConvertError(f"{path}: not a readable .npy array ({_one_line(error)}); save the batch with numpy.save") \
            from None
    if not isinstance(images, np.ndarray):  # an .npz archive under an .npy name
        images.close()
        raise ConvertError(f"{path}: an .npz archive, not one .npy array; save the batch with numpy.save")
    if images.dtype.fields is not None or images.dtype.kind not in NUMERIC_KINDS:
        raise ConvertError(f"{path}: the batch holds {images.dtype}, not numbers; save it as float32")
    if images.ndim == 3:
        images = images[None]
    if images.shape[1:] != shape or not images.shape[0]:
        raise ConvertError(f"{path}: input batch has shape {images.shape}, the network takes [N, {', '.join(map(str, shape))}] (NHWC; --input-size sets the size)")
    return np.asarray(images, dtype=np.float32)


def _one_line(error):
    return " ".join(str(error).split())[:ERROR_DETAIL_CHARS] or type(error).__name__


def _load_image(path, shape, low, high, mean=None):
    # TF-Slim's evaluation preprocessing: central crop of 87.5%, bilinear resize, then scale to the range
    # (inception) or subtract the channel means from [0, 255] (vgg_preprocessing, for VGG and ResNet-v1)
    try:
        from PIL import Image
    except ImportError:
        raise ConvertError("reading an image needs Pillow: pip install pillow (or pass an .npy batch)") from None
    try:
        with warnings.catch_warnings():
            # Pillow warns, on stderr, of images over its own bound: here they are refused instead
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ConvertError(f"{path}: {image.width}x{image.height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                   "an input image may have; resize it first")
            image = image.convert("RGB")
    except ConvertError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ConvertError(f"{path}: too many pixels to decode ({_one_line(error)}); resize it first") from None
    except Exception as error:  # image decoders meet untrusted bytes and raise many kinds of errors on them
        raise ConvertError(f"{path}: not a readable image or .npy batch ({_one_line(error)})") from None
    width, height = image.size
    crop_w, crop_h = round(width * 0.875), round(height * 0.875)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((shape[1], shape[0]), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if mean is not None:
        return (pixels * 255.0 - np.asarray(mean, dtype=np.float32))[None]
    return (pixels * (high - low) + low)[None]


def compare_weights(backend, expected, found):
    """Bit-exact weight checks of ``found`` against ``expected`` (both ``{key: array}``)."""
    checks = []
    for key in sorted(set(expected) - set(found)):
        checks.append(Check(backend, "weights", key, False, f"missing from the ported file (expected shape {list(expected[key].shape)})"))
    for key in sorted(set(found) - set(expected)):
        checks.append(Check(backend, "weights", key, False, "extra tensor: no mapping row produces it"))
    for key in sorted(set(expected) & set(found)):
        want, got = np.asarray(expected[key]), np.asarray(found[key])
        if want.shape != got.shape:
            checks.append(Check(backend, "weights", key, False, f"shape {list(got.shape)}, expected {list(want.shape)}"))
            continue
        if got.dtype != want.dtype:
            if not (want.dtype.kind == "f" and got.dtype.name in oracle.REDUCED_PRECISION):
                checks.append(Check(backend, "weights", key, False, f"dtype {got.dtype}, expected {want.dtype}"))
                continue
            want = want.astype(got.dtype)  # a port written with --dtype holds the cast value
        # equal_nan masks both arrays (25 times slower on VGG's fc6): only where plain equality fails
        if np.array_equal(want, got) or np.array_equal(want, got, equal_nan=want.dtype.kind == "f"):
            checks.append(Check(backend, "weights", key, True))
        else:
            delta = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))
            checks.append(Check(backend, "weights", key, False, f"differs from the checkpoint (max |delta| {delta:.3g})",
                                {"max_abs": delta}))
    return checks


def compare_outputs(backend, reference, outputs, *, atol, floors=None):
    """Oracle checks of every end point a backend produced against TF-Slim's (``floors``: each one's least bound)."""
    checks = []
    for name, ref in reference.items():
        if name not in outputs:
            continue
        out = np.asarray(outputs[name])
        if out.shape != ref.shape:
            checks.append(Check(backend, "output", name, False, f"{name}: shape {list(out.shape)}, TF-Slim gives {list(ref.shape)}"))
            continue
        if not out.size:
            checks.append(Check(backend, "output", name, False, f"{name}: empty (shape {list(out.shape)})"))
            continue
        result = oracle.compare(ref, out, atol=atol, floor=(floors or {}).get(name, 0.0))
        metrics = dataclasses.asdict(result)
        metrics["top_k"] = {str(k): v for k, v in result.top_k.items()}
        message = "" if result.ok else f"{name}: max |delta| {result.max_abs:.3g} exceeds {result.bound:.3g}"
        checks.append(Check(backend, "output", name, result.ok, message, metrics))
    if not checks:  # weights alone prove nothing about the network that runs them
        checks.append(Check(backend, "output", "end points", False,
                            f"the model gave none of TF-Slim's end points ({', '.join(reference)})"))
    return checks


@dataclasses.dataclass(frozen=True)
class ClassMap:
    """Which TF-Slim class each class of a port is: ``port class i`` = ``TF class i + (i >= dropped)``."""

    tf_classes: int
    port_classes: int
    dropped: int | None  # the TF class the port lacks (the background), None for the identity
    why: str

    def apply(self, reference):
        """TF-Slim's ``[N, classes]`` output as the port's classes."""
        return reference if self.dropped is None else np.delete(reference, self.dropped, axis=-1)

    def __str__(self):
        last = self.port_classes - 1
        if self.dropped is None:
            return f"port classes 0..{last} = TF-Slim classes 0..{last} ({self.why})"
        return (f"port classes 0..{last} = TF-Slim classes {1 if self.dropped == 0 else 0}..{self.tf_classes - 1} "
                f"without {self.dropped} ({self.why})")


def class_map(table, tf_classes, port_classes, background=mapping_module.BACKGROUND_AUTO):
    """The correspondence between a port's classes and TF-Slim's, derived from the two class counts.

    A port with TF-Slim's count is the identity (unless ``--drop-background`` says one class must be
    gone). A port with one class fewer lacks the background class, which only holds where the
    checkpoint has the table's released class count or ``background`` is ``drop``. Anything else
    has no correspondence: ``ConvertError`` naming the class axis.
    """
    index, released = table.background_class, table.num_classes
    if port_classes == tf_classes and background != mapping_module.BACKGROUND_DROP:
        return ClassMap(tf_classes, port_classes, None, "every class, in order")
    may_drop = index is not None and background != mapping_module.BACKGROUND_KEEP and (
        background == mapping_module.BACKGROUND_DROP or tf_classes == released)
    if port_classes == tf_classes - 1 and may_drop:
        why = "--drop-background" if background == mapping_module.BACKGROUND_DROP else \
            f"background class {index} dropped: {tf_classes} is {table.architecture}'s released count"
        return ClassMap(tf_classes, port_classes, index, why)
    expected = {tf_classes} | ({tf_classes - 1} if may_drop else set())
    raise ConvertError(
        f"class axis: the port has {port_classes} classes where TF-Slim's classifier has {tf_classes}; "
        f"a port of this checkpoint has {' or '.join(map(str, sorted(expected, reverse=True)))} "
        f"(all classes{', or all but the background class' if may_drop else ''}), so it lacks or shifts classes"
    )


def _port_classes(plan, found):
    # the class count of the port's classifier tensors, by the class axis the table marks
    for entry in plan.entries:
        if entry.classes is not None and entry.key in found and np.ndim(found[entry.key]) > entry.classes:
            return int(np.shape(found[entry.key])[entry.classes])
    return None


def resolve_device(device):
    """``auto`` becomes ``cuda`` where torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    if device not in DEVICES:
        raise ConvertError(f"--device must be one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if device == "cuda" and not available:
        raise ConvertError("--device cuda: no CUDA device is available here; use --device auto or cpu")
    return "cuda" if available else "cpu"


def verify(
    checkpoint,
    ported=(),
    *,
    arch=None,
    mapping=None,
    scope=None,
    ema=None,
    background=mapping_module.BACKGROUND_AUTO,
    aux=None,
    input_size=None,
    include_top=None,
    input_file=None,
    batch=2,
    seed=0,
    device="auto",
    atol=None,
    torch_model="exact",
    progress=None,
):
    """Check each ported file (or, with none, a fresh port to every target) against the checkpoint.

    TF-Slim's output is taken whole (every class); each port's classes are matched to it by a
    correspondence derived from the checkpoint's and the port's own class counts (``class_map``),
    never from how the port was made.

    Args:
        checkpoint: the TF-Slim checkpoint (any path form the reader takes).
        ported: files to check: ``.pth``, ``.safetensors``, ``.h5``, ``.weights.h5``, ``.onnx``.
        arch, mapping, scope, ema, background, aux, input_size, include_top: the ``Options`` fields the
            ports were made with; ``background`` here says what the ports must have done (``auto``
            accepts what the class counts show). Those left None are taken from what the ports record
            (``converter.provenance``), else their defaults; those given must agree with it
            (ConvertError naming the option and the files otherwise).
        input_file: an ``.npy`` batch (NHWC) or an image; seeded random input otherwise.
        device: ``auto``, ``cpu`` or ``cuda`` for every backend and the reference.
        atol: the oracle's relative bound; by default ``oracle.ATOL``, or the reduced-precision bound
            for a file holding float16 or bfloat16 tensors.
        torch_model: run torch files in ``exact`` (TF semantics), ``torchvision`` or ``timm`` models.
        progress: ``progress(phase)`` is called as each phase starts (the reference, each backend).

    Returns:
        a ``Report``; ``report.ok`` is the verdict. Arguments that cannot work (a missing file, an
        unknown suffix, an absent runtime) raise ``preflight.UsageError`` before TensorFlow is imported.
    """
    from converter import preflight, provenance

    started = time.perf_counter()
    progress = progress or (lambda phase: None)
    preflight.check_verify(ported, input_file=input_file, torch_model=torch_model)
    given = {"arch": arch, "mapping": mapping, "ema": ema, "aux": aux, "input_size": input_size,
             "include_top": include_top}
    records = {pathlib.Path(path).name: provenance.read(path) for path in ported}
    resolved = provenance.agree(records, {key: value for key, value in given.items() if value is not None})
    chosen = Options.of(**resolved, scope=scope, background=background, strict=False)
    plan_arguments = chosen.plan_arguments()
    adopted = {key: value for key, value in resolved.items() if given.get(key) is None}
    if adopted.get("input_size") is not None:
        plan_arguments["input_size"] = input_size_module.InputSize(*adopted["input_size"], "recorded in the ports")

    from converter import reference
    from converter.convert import table_for

    device = resolve_device(device)
    with open_checkpoint(checkpoint) as ckpt:
        names = ckpt.names()
        shapes = {name: ckpt.info(name).shape for name in names}
        if ckpt.format == "tf2":
            raise ConvertError(f"{ckpt.path}: a TF2 object-based checkpoint, not a TF-Slim one; nothing to verify")
        table = table_for(names, chosen.arch, chosen.mapping, scope=scope, checkpoint=ckpt.path)
        options = {key: value for key, value in plan_arguments.items() if key != "background"}
        # the checkpoint's own facts (its network, heads and input size), the same for every target
        facts = mapping_module.plan(shapes, table, next(iter(table.targets)), **options,
                                    background=mapping_module.BACKGROUND_KEEP)
        images, described = make_input(table, input_file=input_file, batch=batch, seed=seed,
                                       size=facts.input_size.hw)
        end_points = tuple(point for point in table.facts.end_points
                           if chosen.include_top or point != HEAD_END_POINT)
        phases = {"checkpoint": time.perf_counter() - started}
        progress(f"reference: TF-Slim {table.architecture} in TensorFlow on {device}")
        if table.facts.meta_graph is not None:  # a network recovered from its .meta: that graph is the reference
            from converter.metagraph import reference as graph_reference

            ref = graph_reference.run(ckpt.path, table, images, ema=chosen.ema, device=device)
            phases["reference"] = time.perf_counter() - started - sum(phases.values())
        else:
            ref = reference.run_reference(
                ckpt.path, images, architecture=table.architecture, end_points=end_points, ema=chosen.ema,
                device=device, scope=scope, phases=phases,
            )
        report = Report(str(ckpt.path), table.architecture, described, atol or oracle.ATOL, reference.tf_device(device))
        report.phases = phases
        report.decisions = [f"{topic}: {sentence}" for topic, sentence in facts.decisions() if topic != "classes"]
        if table.facts.meta_graph is not None:
            report.decisions.append(f"reference: {graph_reference.describe(table)}")
        report.decisions += _provenance_decisions(records, ckpt.path)
        if adopted:
            report.decisions.append("options from the ports' records: " + ", ".join(
                f"{key} {provenance.shown(key, value)}" for key, value in adopted.items()))
        context = _Context(ckpt, shapes, table, images, ref, device, atol, options, background)
        with tempfile.TemporaryDirectory(prefix="ckpt-convert-verify-") as scratch:
            mark = time.perf_counter()
            jobs = [(pathlib.Path(p), {"model": torch_model}, False) for p in ported] or _convert_on_the_fly(
                ckpt.path, table, scratch, report, chosen, list(ref)
            )
            if not ported:
                phases["convert"] = time.perf_counter() - mark
            for path, runtime_options, advisory in jobs:
                progress(f"checking {path.name} ({format_of(path).target}, {runtime_options.get('model') or 'runtime'})")
                mark = time.perf_counter()
                _check_file(report, context, path, runtime_options, advisory)
                phases[report.backends[-1].name] = time.perf_counter() - mark
    report.seconds = time.perf_counter() - started
    return report


def _provenance_decisions(records, checkpoint):
    # what the ports say of their source: a port of another checkpoint fails its weights anyway; this says why
    from converter import provenance

    lines, digest = [], None
    for name, record in records.items():
        if not record.get("checkpoint_blake2b"):
            lines.append(f"source: {name} records no provenance; checked with the options given")
            continue
        if digest is None:
            digest = provenance.checkpoint_hash(checkpoint)
        same = record["checkpoint_blake2b"] == digest
        lines.append(f"source: {name} was made from {record.get('checkpoint')} by ckpt-convert "
                     f"{record.get('ckpt_convert_version')} ({'the same bytes as this checkpoint' if same else 'another checkpoint: its bytes differ'})")
    return lines


@dataclasses.dataclass
class _Context:
    """What every port of one verification is checked against."""

    ckpt: object
    shapes: dict
    table: object
    images: np.ndarray
    reference: dict  # TF-Slim's end points, every class
    device: str
    atol: float | None
    options: dict  # ``mapping.plan``'s arguments but background (``Options.plan_arguments``)
    background: str
    drifts: dict = dataclasses.field(default_factory=dict)  # (dtype, activations too) -> sensitivity.drift


def _convert_on_the_fly(checkpoint, table, scratch, report, options, end_points):
    # ``options``: an ``Options``, as the ports would have been made
    from converter import preflight
    from converter.convert import convert, third_party_notes

    jobs, written = [], {}
    # the table already chosen, and every variable outside it skipped: the ports are checked, not the checkpoint
    options = dataclasses.replace(options, arch=None, mapping=str(table.path), strict=False)
    for name, runtime_options, advisory in ON_THE_FLY:
        target = format_of(name).target
        model = runtime_options.get("model")
        if target not in table.targets or (model not in (None, "exact") and model not in table.targets[target].third_party):
            continue  # a target or third-party model the table does not port to
        unavailable = preflight.skipped_runtime(target, model if model != "exact" else None)
        if unavailable:
            label = model if model not in (None, "exact") else target
            report.backends.append(Backend(f"{label} (skipped)", name, target, advisory=True,
                                           note=f"not run: {unavailable}"))
            continue
        if name not in written:
            # an ONNX model outputs logits only unless asked for the other end points (those the checkpoint has)
            extra = {"outputs": end_points} if target == "onnx" else {}
            try:
                result = convert(checkpoint, to=target, output=pathlib.Path(scratch) / name, options=options, **extra)
                written[name] = (None, third_party_notes(result.plan))
            except ConvertError as error:
                written[name] = (str(error), [])
        error, notes = written[name]
        if error is not None:
            report.backends.append(Backend(f"{target} (not convertible)", name, target, note=error.splitlines()[0]))
            continue
        if model not in (None, "exact") and any(f"not {model}'s" in note for note in notes):
            note = next(note for note in notes if f"not {model}'s" in note)
            report.backends.append(Backend(f"{model} (skipped)", name, target, advisory=True, note=note))
            continue
        jobs.append((pathlib.Path(scratch) / name, runtime_options, advisory or bool(_drift(table, target))))
    return jobs


def _drift_floors(context, found, *, computes_reduced):
    """Each end point's least bound for a reduced-precision port: ``oracle.DRIFT_FACTOR`` x the drift the
    float32 network shows under a perturbation of the port's dtype (``converter.sensitivity``); and what the
    note says of it. Measured once per dtype and verification."""
    from converter import preflight, sensitivity

    dtype = oracle.coarsest(value.dtype for value in found.values())
    missing = preflight.skipped_runtime("torch", None)
    if "torch" not in context.table.targets or missing:
        return None, f"the network's own drift not measured ({missing or 'no torch target'})"
    key = (dtype, computes_reduced)
    if key not in context.drifts:
        plan = mapping_module.plan(context.shapes, context.table, "torch", **context.options,
                                   background=mapping_module.BACKGROUND_KEEP)
        context.drifts[key] = sensitivity.drift(plan, context.ckpt.read, context.images, dtype,
                                                activations=computes_reduced, device=context.device)
    what = "weights and activations" if computes_reduced else "weights"
    return ({name: oracle.DRIFT_FACTOR * value for name, value in context.drifts[key].items()},
            f"and at least {oracle.DRIFT_FACTOR:g} x the float32 network's drift with its {what} perturbed by "
            f"{dtype}'s unit roundoff")


def _drift(table, target):
    # why the model a target's output loads into is close, not equivalent (the table's targets.<target>.drift)
    spec = table.targets.get(target)
    return spec.drift if spec is not None else ""


def _check_file(report, context, path, runtime_options, advisory):
    found = format_of(path)
    target, runtime = found.target, found.runtime()
    label = f"{runtime.describe(path, **runtime_options)} ({path.name})"
    backend = Backend(label, str(path), target, advisory=advisory, note=_drift(context.table, target))
    report.backends.append(backend)
    if not path.is_file():
        report.checks.append(Check(label, "weights", str(path), False, f"{path}: no such file"))
        return
    table, ckpt = context.table, context.ckpt
    # first as if every class were kept: the port's own class count then says which correspondence holds
    plan = mapping_module.plan(context.shapes, table, target, **context.options,
                               background=mapping_module.BACKGROUND_KEEP)
    try:
        found = runtime.load_weights(path, plan)
    except Exception as error:  # torch, onnx and h5py each raise their own errors on a damaged file
        report.checks.append(Check(label, "weights", str(path), False, f"{path}: cannot read ({_one_line(error)})"))
        return
    classes = None
    port_classes = _port_classes(plan, found)
    if plan.background.classes is not None and port_classes is not None:
        try:
            classes = class_map(table, plan.background.classes, port_classes, context.background)
        except ConvertError as error:
            report.checks.append(Check(label, "weights", "class axis", False, str(error)))
            return
        backend.classes = str(classes)
        if classes.dropped is not None:
            plan = mapping_module.plan(context.shapes, table, target, **context.options,
                                       background=mapping_module.BACKGROUND_DROP)
    expected = dict(plan.tensors(ckpt.read))
    report.checks += compare_weights(label, expected, found)
    atol, floors = context.atol, None
    if atol is None:
        layers = oracle.depth(table.graph)
        atol = oracle.atol_for((value.dtype for value in found.values()), layers)
        if atol != oracle.ATOL:
            floors, measured = _drift_floors(context, found, computes_reduced=target == "onnx")
            backend.note = (f"reduced precision: bound {atol:.3g} x max(1, max|ref|) "
                            f"({oracle.REDUCED_PRECISION_FACTOR:g} x unit roundoff x sqrt({layers} layers)), {measured}")
    try:
        outputs, backend.device = runtime.run(path, plan, context.images, device=context.device, **runtime_options)
    except ConvertError as error:  # ours: complete (every key a state dict lacks), on one line
        report.checks.append(Check(label, "output", "run", False, " ".join(str(error).split())))
        return
    except Exception as error:  # a runtime refusing a damaged or crafted model (an unknown op, a lost initializer)
        report.checks.append(Check(label, "output", "run", False, f"{path}: cannot run ({_one_line(error)})"))
        return
    class_points = mapping_module.class_end_points(table)
    reference = {name: classes.apply(value) if classes is not None and name in class_points else value
                 for name, value in context.reference.items()}
    report.checks += compare_outputs(label, reference, outputs, atol=atol, floors=floors)
