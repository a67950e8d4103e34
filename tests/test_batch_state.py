"""The batch's typed records: the status enum, state entries written and read back, and a state file in
the format the first batches wrote resumed without converting again."""

import hashlib
import json
import shutil

import pytest

from converter import __version__, batch
from converter.batch.records import ModelRecord, State, Status, TargetRecord, TargetState
from converter.batch.state import checkpoint_files, content_hash, read_state, target_key
from converter.options import Options

pytest.importorskip("torch", reason="the batch writes torch outputs")

# the options every model of a plain batch had, as the first state files keyed them
FIRST_FORMAT_OPTIONS = {"arch": None, "mapping": None, "scope": None, "ema": False, "background": "auto", "aux": None,
                        "input_size": None, "strict": True}


def _model(small, root):
    root.mkdir(parents=True)
    for path in small.v2.parent.glob(small.v2.name + ".*"):
        shutil.copy(path, root / path.name)
    return root / small.v2.name


def _first_format_key(content, table_digest, target, output, options):
    # the key recipe of the first batch state files, spelled out: blake2b-128 over sorted JSON
    text = json.dumps({"version": __version__, "checkpoint": content, "mapping": table_digest, "target": target,
                       "output": output, "options": options}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def test_the_status_enum_keeps_the_words_of_the_files():
    assert [status.value for status in Status] == ["ok", "up to date", "failed", "partial", "pending"]
    assert Status("up to date") is Status.UP_TO_DATE and Status.OK == "ok"
    assert json.dumps({"status": Status.FAILED}) == '{"status": "failed"}'
    assert f"{Status.PARTIAL}" == "partial" and str(Status.PENDING) == "pending"
    with pytest.raises(ValueError):
        Status("done")


def test_state_records_round_trip_through_json():
    written = TargetState(Status.OK, "k" * 32, output="model.pth", size=10, mtime_ns=5, bytes_read=7, verified=True,
                          max_error=1e-6, decisions={"scope": "InceptionV3"}, skipped={"left out": 2},
                          notes=("EMA shadows used (--ema auto)",))
    failed = TargetState(Status.FAILED, "f" * 32, output="model.onnx", reason="onnx: no", detail="Traceback ...")
    claimed = TargetState(Status.PENDING, "p" * 32, output="model.h5")
    state = State(__version__, "/ckpt/model.ckpt", "inception_v3", "c" * 32, {"/ckpt/model.ckpt.index": {}},
                  "/tables/inception_v3.yaml", "d" * 32, {"torch": written, "onnx": failed, "keras": claimed})
    data = json.loads(json.dumps(state.to_dict()))
    assert State.from_dict(data) == state
    assert data["targets"]["torch"]["status"] == "ok" and data["mapping"] == {"path": "/tables/inception_v3.yaml",
                                                                                "digest": "d" * 32}
    # each entry holds the keys the first state files held for its kind, no more
    assert set(data["targets"]["onnx"]) == {"status", "key", "output", "reason", "detail"}
    assert set(data["targets"]["keras"]) == {"status", "key", "output"}
    assert set(data["targets"]["torch"]) == {"status", "key", "output", "size", "mtime_ns", "bytes_read", "verified",
                                             "max_error", "decisions", "skipped", "notes"}
    # an entry no batch wrote is dropped (its target is done again), the rest are kept
    data["targets"]["onnx"]["status"] = "done"
    assert set(State.from_dict(data).targets) == {"torch", "keras"}
    record = ModelRecord("m", "/ckpt/model.ckpt", "inception_v3", Status.PARTIAL,
                         targets={"torch": TargetRecord(Status.UP_TO_DATE, output="m/model.pth")})
    report = json.loads(json.dumps(record.to_dict()))
    assert report["status"] == "partial" and report["targets"]["torch"]["status"] == "up to date"
    assert not record.ok and ModelRecord("m", "c", None, Status.UP_TO_DATE).ok


def test_a_state_file_of_the_first_format_resumes(tmp_path, small):
    checkpoint = _model(small, tmp_path / "zoo")
    outdir = tmp_path / "out"
    folder = outdir / "model.ckpt"
    first = batch.run_batch([tmp_path / "zoo"], outdir, jobs=1)
    assert first.ok, first.markdown()
    output = folder / "model.pth"
    written = json.loads((folder / batch.STATE_FILENAME).read_text())
    # the state as the first batches wrote it: plain JSON, the key over the options as a dict
    content, files = content_hash(checkpoint_files(checkpoint), {})
    table = written["mapping"]
    key = _first_format_key(content, table["digest"], "torch", "model.pth", FIRST_FORMAT_OPTIONS)
    stat = output.stat()
    entry = {"status": "ok", "key": key, "output": "model.pth", "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "bytes_read": 1, "verified": None, "max_error": None,
             "decisions": written["targets"]["torch"]["decisions"], "skipped": {}, "notes": []}
    first_format = {"version": __version__, "checkpoint": str(checkpoint), "architecture": "inception_v3",
                    "content": content, "files": files, "mapping": table, "targets": {"torch": entry}}
    (folder / batch.STATE_FILENAME).write_text(json.dumps(first_format, indent=2) + "\n")
    assert written["targets"]["torch"]["key"] == key
    resumed = batch.run_batch([tmp_path / "zoo"], outdir, jobs=1)
    (record,) = resumed.models
    assert record.status is Status.UP_TO_DATE and output.stat().st_mtime_ns == stat.st_mtime_ns
    # the same state under other options is another output: converted again, under its own key
    (record,) = batch.run_batch([tmp_path / "zoo"], outdir, jobs=1, background="keep").models
    assert record.status is Status.OK and output.stat().st_mtime_ns != stat.st_mtime_ns
    state = read_state(folder)
    assert state.targets["torch"].key == target_key(content, table["digest"], "torch", "model.pth",
                                                    Options(background="keep")) != key


def test_an_interrupted_target_is_converted_again(tmp_path, small):
    _model(small, tmp_path / "zoo")
    outdir = tmp_path / "out"
    assert batch.run_batch([tmp_path / "zoo"], outdir, jobs=1).ok
    path = outdir / "model.ckpt" / batch.STATE_FILENAME
    state = json.loads(path.read_text())
    # as a worker leaves it when stopped while writing: the output claimed, not yet written
    state["targets"]["torch"] = {"status": "pending", "key": state["targets"]["torch"]["key"], "output": "model.pth"}
    path.write_text(json.dumps(state))
    (record,) = batch.run_batch([tmp_path / "zoo"], outdir, jobs=1).models
    assert record.status is Status.OK and read_state(outdir / "model.ckpt").targets["torch"].written
