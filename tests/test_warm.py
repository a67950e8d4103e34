"""Networks kept between verifications: each checkpoint's weights replace the last one's, whatever the order."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch ports are checked with torch")
pytest.importorskip("tensorflow", reason="verify runs the TF-Slim reference in TensorFlow")
pytest.importorskip("onnxruntime", reason="the ONNX ports are run in onnxruntime")

from converter import _warm, provenance, reference  # noqa: E402
from converter.batch import run_batch  # noqa: E402
from converter.convert import convert  # noqa: E402
from converter.errors import ConvertError  # noqa: E402
from converter.runtimes import torch as torch_runtime  # noqa: E402
from converter.verify import verify  # noqa: E402


@pytest.fixture(scope="module")
def ports(small, tmp_path_factory):
    """Ports of the small training checkpoint's raw weights and of its moving averages (same shapes, other values)."""
    folder = tmp_path_factory.mktemp("ports")
    convert(small.train, to="torch", output=folder / "raw.pth")
    convert(small.train, to="torch", output=folder / "ema.pth", ema=True)
    # the raw port without its record, so that verify takes --ema from the caller and not from the file
    state = torch.load(folder / "raw.pth", weights_only=True)
    del state._metadata[provenance.PTH_KEY]
    torch.save(state, folder / "unrecorded.pth")
    return folder


def _outputs(report):
    return {(c.backend.split(" (")[0], c.name): c.passed for c in report.checks if c.kind == "output"}


def test_each_checkpoint_replaces_every_weight_of_the_kept_networks(small, ports):
    _warm.clear()
    assert verify(small.train, [ports / "raw.pth"], device="cpu").ok
    networks, modules = len(reference._networks), len(torch_runtime._exact_modules)
    # the same graph and module, now with the moving averages: a stale weight would fail these
    ema = verify(small.train, [ports / "ema.pth"], ema=True, device="cpu")
    assert ema.ok, ema.table()
    with pytest.raises(ConvertError, match="made with no --ema"):
        verify(small.train, [ports / "raw.pth"], ema=True, device="cpu")
    mixed = verify(small.train, [ports / "unrecorded.pth"], ema=True, device="cpu")
    assert not any(_outputs(mixed).values()), mixed.table()
    again = verify(small.train, [ports / "raw.pth"], device="cpu")
    assert again.ok, again.table()
    assert (len(reference._networks), len(torch_runtime._exact_modules)) == (networks, modules)
    # TensorFlow's outputs from the kept graph are those of a graph built for the checkpoint alone
    for ema_flag in (True, False):
        warm = reference.run_reference(small.train, small.input, end_points=small.meta["end_points"], ema=ema_flag)
        for name, value in small.golden(ema=ema_flag).items():
            np.testing.assert_allclose(warm[name], value, rtol=0, atol=1e-5 * max(1.0, np.abs(value).max()))


def _manifest(path, rows):
    path.write_text("models:\n" + "".join(f"  - {{path: {source}, id: {model_id}}}\n" for model_id, source in rows))
    return path


def _by_checkpoint(report, rows):
    # each record without what names or times it, under its checkpoint
    sources = dict(rows)
    found = {}
    for record in (record.to_dict() for record in report.models):
        kept = {key: value for key, value in record.items() if key not in ("id", "seconds")}
        kept["targets"] = {target: {key: value for key, value in entry.items() if key not in ("seconds", "output")}
                           for target, entry in record["targets"].items()}
        found[str(sources[record["id"]])] = kept
    return found


def test_batch_verify_does_not_depend_on_the_order_of_models(small, finetune, tmp_path):
    # three structures (the small network twice, a 5-class fine-tune at full size, a 224 input) in one
    # worker, in two orders: every record, error and decision the same
    fleet = [small.v2, finetune("inception_v3_flowers").v2, small.v1, finetune("inception_v3_224").v2]
    forward = [(f"m{i}", path) for i, path in enumerate(fleet)]
    backward = [(f"m{len(fleet) - 1 - i}", path) for i, path in enumerate(fleet)]
    reports = []
    for name, rows in (("forward", forward), ("backward", backward)):
        manifest = _manifest(tmp_path / f"{name}.yaml", rows)
        report = run_batch([manifest], tmp_path / name, targets="torch,onnx", verify=True, jobs=1)
        assert report.ok, report.markdown()
        reports.append(_by_checkpoint(report, rows))
    assert reports[0] == reports[1]
    assert all(record["max_error"] is not None for record in reports[0].values())


def test_report_states_the_seconds_of_each_phase(small, ports):
    report = verify(small.train, [ports / "raw.pth"], device="cpu")
    phases = report.to_dict()["phases"]
    assert list(phases) == ["checkpoint", "reference import", "reference build", "reference restore",
                            "reference run", report.backends[0].name]
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= report.seconds + 0.01
