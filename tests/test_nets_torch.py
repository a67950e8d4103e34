"""The torch network built from the mapping table computes what TF-Slim computes, judged by the oracle."""

import numpy as np
import pytest

from converter import mapping, oracle
from converter.checkpoint import open_checkpoint

# torch loads before TensorFlow in one process (converter.reference); these tests import TF later
torch = pytest.importorskip("torch", reason="the torch network needs torch")
nets = pytest.importorskip("converter.nets.torch", reason="the torch network needs torch")

# NHWC (TF, the golden outputs) <-> NCHW (torch)
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


def _plan(path, *, ema=False, background="auto", aux=None, table="inception_v3"):
    with open_checkpoint(path) as ckpt:
        shapes = {name: ckpt.info(name).shape for name in ckpt.names()}
        plan = mapping.plan(shapes, mapping.load_table(table), "torch", ema=ema,
                            background=background, aux=aux)
        return plan, nets.plan_state_dict(plan, ckpt.read)


def run(net, images):
    """End points of ``net`` on NHWC ``images``, back in NHWC as numpy."""
    device = next(net.parameters()).device
    with torch.no_grad():
        points = net(torch.from_numpy(np.ascontiguousarray(images.transpose(NHWC_TO_NCHW))).to(device))
    return {name: (value.cpu().numpy().transpose(NCHW_TO_NHWC) if value.ndim == 4 else value.cpu().numpy())
            for name, value in points.items()}


def compare_with_golden(outputs, golden, *, background=0):
    """``{end point: Comparison}``; classifier goldens lose TF-Slim's background class unless ``background`` is None."""
    results = {}
    for name, reference in golden.items():
        if reference.ndim == 2 and background is not None and outputs[name].shape[1] == reference.shape[1] - 1:
            reference = np.delete(reference, background, axis=1)
        results[name] = oracle.compare(reference, outputs[name])
    return results


@pytest.mark.parametrize("kind, ema", [("v2", False), ("v1", False), ("train", False), ("train", True)])
def test_matches_tf_golden(small, kind, ema):
    plan, state = _plan(getattr(small, kind), ema=ema)
    net = nets.build(plan, state)
    results = compare_with_golden(run(net, small.input), small.golden(ema=ema))
    assert set(results) == set(small.meta["end_points"])
    failed = {name: (c.max_abs, c.bound) for name, c in results.items() if not c.ok}
    assert not failed, f"end points off the TF-Slim reference: {failed}"
    assert all(c.top_k[1] == 1.0 for c in results.values() if c.top_k)


def test_raw_weights_are_not_the_ema_ones(small):
    # the EMA golden differs from the raw one, so the comparison above can tell them apart
    plan, state = _plan(small.train)
    results = compare_with_golden(run(nets.build(plan, state), small.input), small.golden(ema=True))
    assert not results["Logits"].ok


def test_keep_background_gives_tf_slim_logits(small):
    plan, state = _plan(small.v2, background="keep")
    outputs = run(nets.build(plan, state), small.input)
    assert outputs["Logits"].shape == small.golden()["Logits"].shape
    assert all(c.ok for c in compare_with_golden(outputs, small.golden(), background=None).values())


def test_without_aux_the_head_is_gone(small):
    plan, state = _plan(small.v2, aux=False)
    net = nets.build(plan, state)
    assert len(net.state_dict()) == 566
    assert "AuxLogits" not in net.end_points
    assert "AuxLogits" not in run(net, small.input)


def test_state_dict_keys_are_the_plans(small):
    plan, _ = _plan(small.v2)
    net = nets.SlimNet(plan)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {e.key: e.shape for e in plan.entries}


def test_strict_load_refuses_a_missing_tensor(small):
    plan, state = _plan(small.v2)
    del state["Mixed_6c.branch7x7dbl_4.conv.weight"]
    with pytest.raises(RuntimeError, match="Mixed_6c.branch7x7dbl_4.conv.weight"):
        nets.build(plan, state)


@pytest.mark.parametrize(
    "size, kernel, stride", [(35, 3, 1), (17, 7, 1), (299, 3, 2), (150, 3, 2), (8, 3, 2), (9, 1, 2)]
)
def test_same_padding_and_pools_match_tensorflow(size, kernel, stride):
    from converter.reference import import_tensorflow

    tf, _ = import_tensorflow()
    rng = np.random.default_rng(size * 100 + kernel * 10 + stride)
    x = rng.standard_normal((2, size, size + 1, 3)).astype(np.float32)
    w = rng.standard_normal((kernel, 1, 3, 4)).astype(np.float32)  # asymmetric kernel: kh != kw
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(NHWC_TO_NCHW)))
    conv = torch.nn.Conv2d(3, 4, (kernel, 1), bias=False)
    conv.weight.data = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    layer = nets._Layer(conv, None, None, stride, "SAME")
    cases = {
        "conv": (layer, tf.nn.conv2d(x, w, stride, "SAME")),
        "avg_pool": (nets._AvgPool([kernel, kernel], stride, "SAME"), tf.nn.avg_pool2d(x, kernel, stride, "SAME")),
        "max_pool": (nets._MaxPool([kernel, kernel], stride, "SAME"), tf.nn.max_pool2d(x, kernel, stride, "SAME")),
    }
    for name, (step, expected) in cases.items():
        with torch.no_grad():
            got = step(xt, {}).numpy().transpose(NCHW_TO_NHWC)
        assert got.shape == tuple(expected.shape), name
        assert oracle.compare(expected.numpy(), got).max_abs <= 1e-5, name


def test_full_size_matches_tf_golden(full):
    plan, state = _plan(full.v2)
    results = compare_with_golden(run(nets.build(plan, state), full.input), full.golden())
    failed = {name: (c.max_abs, c.bound) for name, c in results.items() if not c.ok}
    assert not failed, f"end points off the TF-Slim reference: {failed}"
