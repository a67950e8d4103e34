"""How far rounding to a reduced precision moves a network's outputs, measured on the network itself.

The depth model behind ``oracle.atol_for`` (errors of about the unit roundoff ``u`` per layer, adding up
like a random walk) holds where each layer passes an error on at its own scale. A network whose layers
amplify errors drifts further on honest rounding: MobileNet's depthwise convolutions behind batch norms,
with relu6 capping the outputs' scale but not their errors. ``drift`` measures that network's response to
a perturbation as large as rounding's and drawn independently of it: the float32 exact module run with
the plan's tensors, and again with every floating tensor (and, for a model that computes in the reduced
dtype, every layer's output) multiplied by ``1 + u * e``, ``e`` uniform in [-1, 1] from a fixed seed.
"""

from converter import oracle
from converter.runtimes import as_float32
from converter.transforms import NHWC_TO_NCHW

SEED = 0


def drift(plan, read, images, dtype, *, activations=False, device="cpu", seed=SEED):
    """``{end point: max |delta|}`` between the float32 network and the network perturbed at ``dtype``.

    Args:
        plan: a torch plan of the network (its exact module is built from it).
        read: reads a checkpoint variable (``Checkpoint.read``).
        images: NHWC float input.
        dtype: ``float16`` or ``bfloat16``: the perturbation is its unit roundoff.
        activations: perturb every layer's output too, as a model computing in ``dtype`` rounds it.
    """
    import torch

    from converter.nets.torch import build, plan_state_dict

    unit = oracle.UNIT_ROUNDOFF[dtype]
    generator = torch.Generator().manual_seed(seed)

    def perturbed(tensor):
        noise = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) * 2 - 1
        return (tensor.double() * (1 + unit * noise.to(tensor.device))).to(tensor.dtype)

    state = plan_state_dict(plan, read)
    net = build(plan, state, device=device)
    batch = torch.from_numpy(as_float32(images).transpose(NHWC_TO_NCHW).copy()).to(device)
    with torch.no_grad():
        clean = net(batch)
        net.load_state_dict({k: perturbed(v) if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d) if activations else ()
        hooks = [module.register_forward_hook(lambda _module, _inputs, output: perturbed(output))
                 for module in net.modules() if isinstance(module, layers)]
        try:
            noisy = net(batch)
        finally:
            for hook in hooks:
                hook.remove()
    return {name: float((noisy[name] - clean[name]).abs().max()) for name in clean}
