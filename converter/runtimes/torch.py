"""Run ported PyTorch files: the exact TF-semantics module, or torchvision's / timm's own model."""

import pathlib
import pickle
import re

from converter import _warm, mapping
from converter.errors import ConvertError
from converter.runtimes import as_float32, end_point_modules, to_nhwc, width_option
from converter.transforms import NHWC_TO_NCHW

MODELS = ("exact", "torchvision", "timm")
# how torch's refusal names the function a pickle asks to import
PICKLE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("running a torch port needs torch: pip install 'ckpt-convert[torch]'") from None
    return torch


def describe(path, model="exact", **_):
    return {"exact": "torch exact", "torchvision": "torchvision", "timm": "timm"}[model]


def _load_state(torch, path):
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests weights_only=False, which would run the file's code: name what it asked for
        asked = PICKLE_GLOBAL.search(str(error))
        raise ConvertError(f"{path}: refused: its pickle calls {asked[1] if asked else 'more than tensors need'}, "
                           "which is never run; it is not a state dict of tensors") from None


def load_weights(path, plan=None):
    """Every tensor of a ``.pth`` (loaded with ``weights_only=True``) or ``.safetensors`` file, as numpy."""
    torch = _torch()
    return {key: _to_numpy(torch, value) for key, value in _load_state(torch, path).items()}


def _to_numpy(torch, tensor):
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; keep the bits, typed by ml_dtypes
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _num_classes(plan):
    # the classifier's class count as the plan writes it (without the background class where it drops it)
    if plan.background.port_classes is None:
        raise ConvertError(f"a headless {plan.table.architecture} file runs in the exact module only "
                           f"(--torch-model exact)")
    return plan.background.port_classes


_exact_modules = _warm.cache()


def _model(torch, name, plan, state):
    if name == "exact":
        from converter.nets.torch import build

        # its structure follows from the table and the tensors' names and shapes; a strict load replaces
        # every tensor, so one module serves every file of that structure
        key = (plan.table.architecture, str(plan.table.path), plan.table.graph,
               tuple((k, tuple(v.shape)) for k, v in state.items()))
        return _exact_modules.get(key, lambda: build(plan, device="cpu"))
    target = plan.table.targets.get("torch")
    spec = target.third_party.get(name) if target is not None else None
    if spec is None:
        raise ConvertError(f"{plan.table.architecture} has no {name} model (the table's targets.torch.{name})")
    options = dict(spec.options, num_classes=_num_classes(plan), **width_option(plan, spec.width))
    if spec.aux is not None:  # the option that builds the auxiliary head, when the file has it
        options[spec.aux] = any(status == mapping.HEAD_KEPT for status in plan.heads.values())
    if name == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec.model)(weights=None, **options)
    import timm

    return timm.create_model(spec.model, pretrained=False, **options)


def run(path, plan, images, *, device="cpu", model="exact"):
    """Load ``path`` into ``model`` (strictly) and return its end points on ``images`` (NHWC) and the device."""
    if model not in MODELS:
        raise ConvertError(f"unknown torch model {model!r}; known: {', '.join(MODELS)}")
    torch = _torch()
    if _warm.threads():
        torch.set_num_threads(_warm.threads())
    state = _load_state(torch, path)
    network = _model(torch, model, plan, state)
    try:
        network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as error:
        # every key torch names (missing, unexpected, misshapen), folded onto one line
        raise ConvertError(f"{path}: does not load into {describe(path, model)} ({' '.join(str(error).split())})") \
            from None
    network = network.to(device).eval()
    batch = torch.from_numpy(as_float32(images).transpose(NHWC_TO_NCHW).copy()).to(device)
    if model == "exact":
        with torch.no_grad():
            outputs = network(batch)
        return to_nhwc({k: v.cpu().numpy() for k, v in outputs.items()}), str(batch.device)
    return _run_with_hooks(torch, network, plan, batch, model), str(batch.device)


def _run_with_hooks(torch, network, plan, batch, model):
    # third-party models return logits only: capture end points from their modules as they run
    modules = dict(network.named_modules())
    captured, wanted = {}, {}
    derived = end_point_modules(plan.table)
    named = plan.table.targets["torch"].third_party[model].end_points
    for point, (own, last, _) in derived.items():
        path = named.get(point) if named else (own if own in modules else last)
        if path in modules:
            wanted[point] = path
    hooks = [modules[path].register_forward_hook(lambda _m, _i, out, point=point: captured.__setitem__(point, out))
             for point, path in wanted.items()]
    try:
        with torch.no_grad():
            network(batch)
            # heads a model skips at inference (torchvision's aux head runs only in training)
            for point, (own, _, source) in derived.items():
                if point not in captured and point in wanted and source in captured:
                    captured[point] = modules[wanted[point]](captured[source])
    finally:
        for hook in hooks:
            hook.remove()
    return to_nhwc({k: v.cpu().numpy() for k, v in captured.items() if isinstance(v, torch.Tensor)})
