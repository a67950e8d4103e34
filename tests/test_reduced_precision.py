"""The reduced-precision bound passes honest float16 and bfloat16 ports of every built-in architecture at full
size, and fails a wrong mapping (two same-shape kernels swapped, or a kernel reshaped instead of transposed).

The bound, as ``verify`` applies it: 2 x unit roundoff x sqrt(network depth) relative to max(1, max|ref|)
(``oracle.atol_for``), and at least 2x the drift the float32 network shows with its weights perturbed by the
dtype's unit roundoff (``converter.sensitivity``: what carries the MobileNets, whose layers amplify errors)."""

import numpy as np
import pytest

from converter import mapping, oracle, sensitivity
from converter.checkpoint import open_checkpoint
from converter.convert import convert

torch = pytest.importorskip("torch", reason="runs the exact module")

from conftest import GENERATED  # noqa: E402

ARCHITECTURES = ["inception_v3", *GENERATED]
DTYPES = ("float16", "bfloat16")
# where the depth model alone rejects honest ports (worst end point over it: MobileNet V1 bfloat16 1.16 at
# Conv2d_13_pointwise, V2 float16 4.4 and bfloat16 4.7 at Conv_1); every other port is within it
AMPLIFYING = {("mobilenet_v1", "bfloat16"), ("mobilenet_v2", "float16"), ("mobilenet_v2", "bfloat16")}


@pytest.fixture(scope="module")
def fixture_of(full, zoo):
    return lambda name: full if name == "inception_v3" else zoo(name)


def _end_points(net, fixture):
    with torch.no_grad():
        outputs = net(torch.from_numpy(fixture.input.transpose(0, 3, 1, 2).copy()))
    return {name: value.numpy().transpose(0, 2, 3, 1) if value.ndim == 4 else value.numpy()
            for name, value in outputs.items()}


def _drifts(fixture, outputs, atol, floors=None):
    # every end point TF-Slim gave, compared at the bound; the port's classes lack the background where it dropped it
    results = {}
    for name, reference in fixture.golden().items():
        if name not in outputs:
            continue
        output = outputs[name]
        if reference.shape != output.shape and reference.shape[-1] == output.shape[-1] + 1:
            reference = reference[..., 1:]
        results[name] = oracle.compare(reference, output, atol=atol, floor=(floors or {}).get(name, 0.0))
    assert results
    return results


def _wrong(state):
    # the first two kernels of one shape exchanged (a mapping that confuses two same-shape rows); where no
    # two share a shape (AlexNet), the last kernel reshaped from HWIO instead of transposed (a missing transpose)
    seen, kernels = {}, [key for key, value in state.items() if value.ndim == 4 and key.endswith("weight")]
    for key in kernels:
        shape = tuple(state[key].shape)
        if shape in seen:
            first = seen[shape]
            state[first], state[key] = state[key].clone(), state[first].clone()
            return f"{first} <-> {key}"
        seen[shape] = key
    key = kernels[-1]
    out, inp, kh, kw = state[key].shape
    state[key] = state[key].permute(2, 3, 1, 0).contiguous().reshape(out, inp, kh, kw)
    return f"{key} not transposed"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_honest_reduced_precision_ports_pass_and_a_wrong_mapping_fails(fixture_of, architecture, tmp_path):
    from converter.api import load

    fixture = fixture_of(architecture)
    depth = oracle.depth(mapping.load_table(architecture).graph)
    for dtype in DTYPES:
        result = convert(fixture.v2, output=tmp_path / f"{dtype}.pth", dtype=dtype)
        atol = oracle.atol_for([dtype], depth)
        floors = {name: oracle.DRIFT_FACTOR * value for name, value in sensitivity.drift(
            result.plan, open_checkpoint(fixture.v2).read, fixture.input, dtype).items()}
        net = load(result.output, end_points=True)
        outputs = _end_points(net, fixture)
        by_depth = _drifts(fixture, outputs, atol)
        assert all(r.ok for r in by_depth.values()) != ((architecture, dtype) in AMPLIFYING), \
            {n: (r.max_abs, r.bound) for n, r in by_depth.items()}
        honest = _drifts(fixture, outputs, atol, floors)
        # an honest port lands well inside its bound: 1.5x or more below it at every end point
        assert all(r.max_abs < r.bound / 1.5 for r in honest.values()), \
            (dtype, {n: (r.max_abs, r.bound) for n, r in honest.items()})
        state = net.state_dict()
        how = _wrong(state)
        net.load_state_dict(state)
        wrong = _drifts(fixture, _end_points(net, fixture), atol, floors)
        assert not all(r.ok for r in wrong.values()), (dtype, how)


def test_the_measured_drift_follows_the_dtype_and_the_seed(tmp_path):
    # the bundled MobileNet V1 0.25: a perturbation 8x larger (bfloat16's unit roundoff over float16's) moves
    # every end point about 8x further; the same seed gives the same drift, another seed a close one
    from conftest import Fixture, FIXTURES

    fixture = Fixture(FIXTURES / "mobilenet_v1")
    plan = convert(fixture.v2, output=tmp_path / "port.pth").plan
    read = open_checkpoint(fixture.v2).read

    def drift(dtype, **options):
        return sensitivity.drift(plan, read, fixture.input, dtype, **options)

    half, brain = drift("float16"), drift("bfloat16")
    assert set(fixture.golden()) <= set(half) and all(value > 0 for value in half.values())
    assert all(3 < brain[name] / half[name] < 20 for name in half), {n: brain[n] / half[n] for n in half}
    assert drift("float16") == half
    other = drift("float16", seed=1)
    assert other != half and all(0.5 < other[name] / half[name] < 2 for name in half)
    assert all(value > 0 for value in drift("float16", activations=True).values())


def test_the_bound_follows_precision_and_depth():
    assert oracle.atol_for(["float32"], 51) == oracle.ATOL
    assert oracle.atol_for(["float16"], 16) < oracle.atol_for(["float16"], 267) < oracle.atol_for(["bfloat16"], 16)
    assert oracle.atol_for(["bfloat16", "float16"], 51) == oracle.atol_for(["bfloat16"], 51)
    assert oracle.atol_for(["float16"]) == oracle.REDUCED_PRECISION_ATOL  # depth unknown
    assert oracle.depth(mapping.load_table("vgg_16").graph) == 16
    assert oracle.depth(mapping.load_table("resnet_v1_50").graph) == 50
    assert np.isclose(oracle.atol_for(["bfloat16"], 64), oracle.REDUCED_PRECISION_FACTOR * 2.0 ** -8 * 8)


def test_verify_bounds_a_reduced_precision_port_by_the_networks_measured_drift(tmp_path):
    # the bundled MobileNet V2 0.35: verify's bound at each end point of a float16 port is the depth bound or
    # 2x the drift measured on the network, whichever is larger, and the note says so
    pytest.importorskip("tensorflow", reason="verify runs TF-Slim's network")
    from conftest import FIXTURES, Fixture
    from converter.api import verify
    from converter.verify import make_input

    fixture = Fixture(FIXTURES / "mobilenet_v2")
    port = convert(fixture.v2, output=tmp_path / "half.pth", dtype="float16")
    report = verify(fixture.v2, [port.output])
    assert report.ok, report.table()
    (backend,) = report.backends
    assert "at least 2 x the float32 network's drift with its weights perturbed by float16" in backend.note
    table = mapping.load_table("mobilenet_v2")
    images, _ = make_input(table, size=port.plan.input_size.hw)
    measured = sensitivity.drift(port.plan, open_checkpoint(fixture.v2).read, images, "float16")
    atol = oracle.atol_for(["float16"], oracle.depth(table.graph))
    outputs = {check.name: check.metrics for check in report.checks if check.kind == "output"}
    assert len(outputs) >= 3
    floors = {name: oracle.DRIFT_FACTOR * measured[name] for name in outputs}
    bounds = {name: metrics["bound"] for name, metrics in outputs.items()}
    assert all(bounds[name] >= max(atol, floors[name] * (1 - 1e-6)) for name in bounds), (bounds, floors)
    assert any(np.isclose(bounds[name], floors[name]) for name in bounds), (bounds, floors)  # the drift decides one
