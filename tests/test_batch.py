"""`ckpt-convert batch`: a fleet of mixed checkpoints to torch and onnx, failures isolated, reruns idempotent,
an interrupted batch resumed, manifests, and the Ray executor."""

import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from converter import batch
from converter.batch import content_hash, discover, read_manifest, run_batch
from converter.checkpoint import open_checkpoint
from converter.errors import ConvertError

torch = pytest.importorskip("torch", reason="the batch's outputs are loaded with torch")
pytest.importorskip("onnx", reason="the batch writes onnx outputs")

ROOT = pathlib.Path(__file__).resolve().parent.parent
REAL_NON_SLIM = ROOT / "fixtures" / "real" / "half_plus_two_snappy"
TARGETS = "torch,onnx"
JOBS = "2"
# bytes flipped in the corrupt copy's data file, far enough apart to hit several tensors
FLIP_EVERY = 50_000
INTERRUPT_COPIES = 10
WAIT_S = 120


def _copy_v2(prefix, target_prefix):
    target_prefix.parent.mkdir(parents=True, exist_ok=True)
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, target_prefix.parent / path.name.replace(prefix.name, target_prefix.name, 1))
    return target_prefix


def _corrupt(prefix):
    data = next(prefix.parent.glob(prefix.name + ".data-*"))
    raw = bytearray(data.read_bytes())
    for i in range(1000, len(raw), FLIP_EVERY):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))


def _make_tree(root, small):
    """v2/model.ckpt, model_v1.ckpt, train/ (steps 1000 and 1234, state names 1234), corrupt/, a non-slim one."""
    _copy_v2(small.v2, root / "v2" / "model.ckpt")
    shutil.copy(small.v1, root / "model_v1.ckpt")
    shutil.copytree(small.train.parent, root / "train")
    _copy_v2(small.train, root / "train" / "model.ckpt-1000")
    _corrupt(_copy_v2(small.v2, root / "corrupt" / "model.ckpt"))
    shutil.copytree(REAL_NON_SLIM, root / "serving" / "variables")
    return root


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "converter", "batch", *map(str, args)], capture_output=True,
                          text=True, timeout=WAIT_S, **kwargs)


def _report(outdir):
    return {record["id"]: record for record in json.loads((outdir / batch.REPORT_JSON).read_text())["models"]}


def _mtimes(outdir):
    return {str(p): p.stat().st_mtime_ns for p in outdir.rglob("*") if p.is_file() and p.name != batch.LOCK_FILENAME
            and not p.name.startswith("report.")}


def _partials(outdir):
    return sorted(outdir.rglob(batch.PARTIAL_GLOB))


def _load(path):
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def fleet(small, tmp_path_factory):
    """The mixed tree, converted once by the command line to torch and onnx with two workers."""
    root = tmp_path_factory.mktemp("fleet")
    tree = _make_tree(root / "tree", small)
    outdir = root / "out"
    result = _cli(tree, "-o", outdir, "--to", TARGETS, "-j", JOBS)
    return tree, outdir, result


def test_statuses_reasons_and_exit_code(fleet):
    _, outdir, result = fleet
    assert result.returncode == batch.EXIT_FAILED, result.stderr
    report = _report(outdir)
    assert set(report) == {"v2/model.ckpt", "model_v1.ckpt", "train/model.ckpt-1234", "corrupt/model.ckpt",
                           "serving/variables/variables"}
    for ok in ("v2/model.ckpt", "model_v1.ckpt", "train/model.ckpt-1234"):
        assert report[ok]["status"] == "ok", report[ok]
        assert report[ok]["architecture"] == "inception_v3"
        assert {t: e["status"] for t, e in report[ok]["targets"].items()} == {"torch": "ok", "onnx": "ok"}
    corrupt = report["corrupt/model.ckpt"]
    assert corrupt["status"] == "failed"
    assert "fails its CRC32C check" in corrupt["reason"] and "\n" not in corrupt["reason"]
    non_slim = report["serving/variables/variables"]
    assert non_slim["status"] == "failed" and "no mapping table" in non_slim["reason"]
    summary = json.loads((outdir / batch.REPORT_JSON).read_text())
    assert summary["ok"] is False and summary["counts"] == {"ok": 3, "failed": 2}


def test_outputs_are_laid_out_by_model_id_and_hold_the_weights(fleet, small):
    tree, outdir, _ = fleet
    assert sorted(p.relative_to(outdir).as_posix() for p in outdir.rglob("*.pth")) == [
        "model_v1.ckpt/model_v1.pth", "train/model.ckpt-1234/model.ckpt-1234.pth", "v2/model.ckpt/model.pth"]
    assert (outdir / "v2" / "model.ckpt" / "model.onnx").is_file()
    assert not list((outdir / "corrupt").rglob("*.pth"))
    state = _load(outdir / "v2" / "model.ckpt" / "model.pth")
    with open_checkpoint(small.v2) as ckpt:
        beta = ckpt.read("InceptionV3/Conv2d_1a_3x3/BatchNorm/beta")
    assert torch.equal(state["Conv2d_1a_3x3.bn.bias"], torch.from_numpy(beta.copy()))
    assert _report(outdir)["v2/model.ckpt"]["targets"]["torch"]["output"] == "v2/model.ckpt/model.pth"


def test_markdown_report_and_progress_lines(fleet):
    _, outdir, result = fleet
    markdown = (outdir / batch.REPORT_MARKDOWN).read_text()
    assert ("| model | architecture | scope | classes | heads | input | skipped | targets | status | max error "
            "| time | reason |") in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(rows) == 5
    corrupt = next(row for row in rows if "`corrupt/model.ckpt`" in row)
    assert "| failed |" in corrupt and "CRC32C" in corrupt
    assert "torch ok, onnx ok" in next(row for row in rows if "`v2/model.ckpt`" in row)
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 5 and lines[-1].startswith("[5/5] ")
    assert "3 ok" in result.stdout and "2 failed" in result.stdout


def test_the_latest_step_of_a_training_directory(tmp_path, small):
    train = tmp_path / "train"
    shutil.copytree(small.train.parent, train)
    _copy_v2(small.train, train / "model.ckpt-1000")
    _copy_v2(small.train, train / "model.ckpt-999")
    ids = lambda **kw: [m.id for m in discover([tmp_path], **kw)]  # noqa: E731
    assert ids() == ["train/model.ckpt-1234"]  # the state file names it
    (train / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n')
    assert ids() == ["train/model.ckpt-999"]
    (train / "checkpoint").unlink()
    assert ids() == ["train/model.ckpt-1234"]  # the highest step, 1234 > 1000 > 999 as numbers
    assert ids(all_steps=True) == ["train/model.ckpt-1000", "train/model.ckpt-1234", "train/model.ckpt-999"]


def test_ids_stay_apart_across_sources(tmp_path, small):
    for name in ("zoo", "other"):
        _copy_v2(small.v2, tmp_path / name / "model.ckpt")
    shutil.copy(small.v1, tmp_path / "zoo" / "model_v1.ckpt")
    (tmp_path / "zoo" / "notes.txt").write_text("not a checkpoint")
    assert [m.id for m in discover([tmp_path / "zoo"])] == ["model.ckpt", "model_v1.ckpt"]
    models = discover([tmp_path / "zoo", tmp_path / "other"])
    assert [m.id for m in models] == ["other/model.ckpt", "zoo/model.ckpt", "zoo/model_v1.ckpt"]
    assert [m.id for m in discover([tmp_path], exclude=[tmp_path / "zoo"])] == ["other/model.ckpt"]
    with pytest.raises(ConvertError, match="no such directory, manifest or checkpoint"):
        discover([tmp_path / "missing"])


def test_a_rerun_does_nothing(fleet):
    tree, outdir, _ = fleet
    before = _mtimes(outdir)
    report = run_batch([tree], outdir, targets=TARGETS, jobs=2)
    records = {r.id: r.to_dict() for r in report.models}
    for ok in ("v2/model.ckpt", "model_v1.ckpt", "train/model.ckpt-1234"):
        assert records[ok]["status"] == "up to date" and records[ok]["seconds"] == 0.0
    assert records["corrupt/model.ckpt"]["status"] == "failed"  # failures are tried again
    after = _mtimes(outdir)
    unchanged = {p: t for p, t in before.items() if "/corrupt/" not in p and "/serving/" not in p}
    assert any(p.endswith(batch.STATE_FILENAME) for p in unchanged)
    assert unchanged and all(after[p] == t for p, t in unchanged.items()), "a rerun rewrote up-to-date files"


def test_hashes_are_cached_by_size_and_mtime(tmp_path, small):
    prefix = _copy_v2(small.v2, tmp_path / "model.ckpt")
    files = batch.checkpoint_files(prefix)
    assert [f.name for f in files] == ["model.ckpt.index", "model.ckpt.data-00000-of-00001"]
    digest, cache = content_hash(files, {})
    assert content_hash(files, cache)[0] == digest
    # a cached entry whose size and mtime match is trusted without reading the file again
    forged = {path: dict(entry, digest="0" * 32) for path, entry in cache.items()}
    assert content_hash(files, forged)[0] != digest
    # once a file's mtime moves, it is read again (the index, untouched, still is not)
    os.utime(files[1], ns=(files[1].stat().st_atime_ns, files[1].stat().st_mtime_ns + 1))
    _, entries = content_hash(files, forged)
    assert entries[str(files[1])]["digest"] == cache[str(files[1])]["digest"]
    assert entries[str(files[0])]["digest"] == "0" * 32


def test_a_changed_checkpoint_is_redone_and_a_touched_one_is_not(tmp_path, small):
    tree, outdir = tmp_path / "tree", tmp_path / "out"
    a = _copy_v2(small.v2, tree / "a" / "model.ckpt")
    b = _copy_v2(small.v2, tree / "b" / "model.ckpt")
    first = run_batch([tree], outdir, jobs=2)
    assert first.ok, first.models
    output_a, output_b = outdir / "a" / "model.ckpt" / "model.pth", outdir / "b" / "model.ckpt" / "model.pth"
    content_a = json.loads((output_a.parent / batch.STATE_FILENAME).read_text())["content"]
    mtime_a, mtime_b = output_a.stat().st_mtime_ns, output_b.stat().st_mtime_ns
    # a: other bytes (the training checkpoint, under the same name); b: only its mtime moves
    for path in a.parent.iterdir():
        path.unlink()
    _copy_v2(small.train, a)
    data_b = next(b.parent.glob("model.ckpt.data-*"))
    os.utime(data_b, ns=(data_b.stat().st_atime_ns, data_b.stat().st_mtime_ns + 10**9))
    second = {r.id: r.to_dict() for r in run_batch([tree], outdir, jobs=2).models}
    assert second["a/model.ckpt"]["status"] == "ok"
    assert second["b/model.ckpt"]["status"] == "up to date"
    assert output_b.stat().st_mtime_ns == mtime_b
    assert output_a.stat().st_mtime_ns != mtime_a and "fc.weight" in _load(output_a)
    assert json.loads((output_a.parent / batch.STATE_FILENAME).read_text())["content"] != content_a
    state_b = json.loads((outdir / "b" / "model.ckpt" / batch.STATE_FILENAME).read_text())
    assert state_b["files"][str(data_b)]["mtime_ns"] == data_b.stat().st_mtime_ns  # the cache moved on
    # different options are a different output: redone
    third = {r.id: r.to_dict() for r in run_batch([tree], outdir, background="keep", jobs=2).models}
    assert third["b/model.ckpt"]["status"] == "ok"
    assert _load(output_b)["fc.weight"].shape[0] == 1001


def test_an_output_the_batch_did_not_write_is_kept_without_force(tmp_path, small):
    tree, outdir = tmp_path / "tree", tmp_path / "out"
    _copy_v2(small.v2, tree / "model.ckpt")
    foreign = outdir / "model.ckpt" / "model.pth"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"someone else's")
    (record,) = run_batch([tree], outdir).models
    assert record.status == "failed" and "pass --force" in record.reason
    assert foreign.read_bytes() == b"someone else's"
    (record,) = run_batch([tree], outdir, force=True).models
    assert record.status == "ok" and "fc.weight" in _load(foreign)


def test_one_batch_at_a_time_per_output_directory(tmp_path, small):
    outdir = tmp_path / "out"
    outdir.mkdir()
    with open(outdir / batch.LOCK_FILENAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConvertError, match="another batch is writing to it"):
            run_batch([small.root], outdir)


def _alive(group):
    """Processes of a process group that have not exited (zombies have)."""
    alive = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell may start background jobs with SIGINT ignored


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="waits for the killed batch's workers through /proc")
@pytest.mark.parametrize("how", ["kill -9 the batch", "Ctrl-C"])
def test_a_killed_batch_leaves_no_partial_file_and_resumes(tmp_path, small, how):
    tree, outdir = tmp_path / "tree", tmp_path / "out"
    for i in range(INTERRUPT_COPIES):
        _copy_v2(small.v2, tree / f"m{i:02d}" / "model.ckpt")
    process = subprocess.Popen(
        [sys.executable, "-m", "converter", "batch", str(tree), "-o", str(outdir), "--to", TARGETS, "-j", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        preexec_fn=_default_sigint)
    first = process.stdout.readline()  # a line per finished model
    assert first.startswith(f"[1/{INTERRUPT_COPIES}] "), first
    if how == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)  # a terminal signals its whole foreground group
        assert process.wait(timeout=WAIT_S) == 130
    else:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + WAIT_S
    while _alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(process.pid), "a worker outlived its killed batch"
    assert not _partials(outdir)
    assert not (outdir / batch.REPORT_JSON).exists()  # it was stopped before the end
    finished = {state.parent.relative_to(outdir).as_posix() for state in outdir.rglob(batch.STATE_FILENAME)
                if all(e["status"] == "ok" for e in json.loads(state.read_text())["targets"].values())
                and len(json.loads(state.read_text())["targets"]) == 2}
    assert 1 <= len(finished) < INTERRUPT_COPIES
    for path in outdir.rglob("*.pth"):  # whatever exists under its final name is whole
        assert "fc.weight" in _load(path)
    result = _cli(tree, "-o", outdir, "--to", TARGETS, "-j", JOBS)
    assert result.returncode == 0, result.stdout + result.stderr
    report = _report(outdir)
    assert len(report) == INTERRUPT_COPIES and not _partials(outdir)
    assert all(r["status"] in ("ok", "up to date") for r in report.values())
    assert {i for i, r in report.items() if r["status"] == "up to date"} == finished


def test_yaml_manifest_with_per_model_options(tmp_path, small):
    _copy_v2(small.v2, tmp_path / "zoo" / "model.ckpt")
    shutil.copytree(small.train.parent, tmp_path / "zoo" / "train")
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        "models:\n"
        "  - {path: zoo/model.ckpt, id: inception/plain, targets: [onnx]}\n"
        "  - {path: zoo/train, architecture: inception_v3, ema: true, background: keep}\n"
        "  - zoo/missing.ckpt\n"
    )
    outdir = tmp_path / "out"
    report = run_batch([manifest], outdir, targets="torch", jobs=2)
    records = {r.id: r.to_dict() for r in report.models}
    assert set(records) == {"inception/plain", "zoo/train", "zoo/missing.ckpt"}
    assert list(records["inception/plain"]["targets"]) == ["onnx"]
    assert (outdir / "inception" / "plain" / "plain.onnx").is_file()
    missing = records["zoo/missing.ckpt"]
    assert missing["status"] == "failed" and "no such checkpoint" in missing["reason"]
    ported = _load(outdir / "zoo" / "train" / "train.pth")
    from converter.convert import convert

    convert(small.train, "torch", tmp_path / "ema.pth", ema=True, background="keep")
    convert(small.train, "torch", tmp_path / "raw.pth", background="keep")
    ema, raw = _load(tmp_path / "ema.pth"), _load(tmp_path / "raw.pth")
    assert all(torch.equal(ported[k], ema[k]) for k in ema)
    assert not torch.equal(ported["Conv2d_1a_3x3.conv.weight"], raw["Conv2d_1a_3x3.conv.weight"])
    assert ported["fc.weight"].shape[0] == 1001
    assert not report.ok


def test_csv_manifest(tmp_path, small):
    shutil.copy(small.v1, tmp_path / "old.ckpt")
    _copy_v2(small.v2, tmp_path / "new" / "model.ckpt")
    manifest = tmp_path / "fleet.csv"
    manifest.write_text("path,architecture,ema,background,targets\n"
                        "old.ckpt,inception_v3,false,,torch;onnx\n"
                        "new/model.ckpt,,,keep,torch\n")
    models = {m.id: m for m in read_manifest(manifest)}
    assert models["old.ckpt"].targets == ("torch", "onnx") and models["old.ckpt"].options.arch == "inception_v3"
    assert models["new/model.ckpt"].options.background == "keep"
    report = run_batch([manifest], tmp_path / "out", jobs=2)
    assert report.ok, report.models
    assert (tmp_path / "out" / "old.ckpt" / "old.onnx").is_file()
    assert _load(tmp_path / "out" / "new" / "model.ckpt" / "model.pth")["fc.weight"].shape[0] == 1001


@pytest.mark.parametrize("text, message", [
    ("path,color\nold.ckpt,red\n", "line 2: unknown field color"),
    ("path,ema\nold.ckpt,maybe\n", "line 2: ema is 'maybe'; use true or false"),
    ("path,targets\nold.ckpt,tensorflow\n", "line 2: unknown target tensorflow"),
    ("file\nold.ckpt\n", "header line naming a path column"),
])
def test_a_malformed_manifest_names_the_row(tmp_path, text, message):
    manifest = tmp_path / "fleet.csv"
    manifest.write_text(text)
    with pytest.raises(ConvertError, match=message):
        read_manifest(manifest)


def test_keras_refuses_depth_multiplied_checkpoints_and_verify_records_errors(tmp_path, small):
    tf = pytest.importorskip("tensorflow", reason="--verify runs the TF-Slim reference; the TF2 checkpoint is TF's")
    tree = tmp_path / "tree"
    _copy_v2(small.v2, tree / "model.ckpt")
    tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).write(str(tree / "tf2" / "ckpt"))
    outdir = tmp_path / "out"
    unverified = {r.id: r.to_dict() for r in run_batch([tree], outdir, targets="torch,onnx,keras", jobs=2).models}
    assert unverified["model.ckpt"]["max_error"] is None
    written = _mtimes(outdir / "model.ckpt")
    # --verify on the same outputs checks them without writing them again
    report = run_batch([tree], outdir, targets="torch,onnx,keras", verify=True, jobs=2)
    records = {r.id: r.to_dict() for r in report.models}
    assert {p: t for p, t in _mtimes(outdir / "model.ckpt").items() if not p.endswith(batch.STATE_FILENAME)} == {
        p: t for p, t in written.items() if not p.endswith(batch.STATE_FILENAME)}
    model = records["model.ckpt"]
    assert model["status"] == "partial", model
    keras = model["targets"]["keras"]
    assert keras["status"] == "failed" and "builds only full-size networks" in keras["reason"]
    assert model["reason"].startswith("keras: ")
    for target in ("torch", "onnx"):
        entry = model["targets"][target]
        assert entry["status"] == "ok" and 0 < entry["max_error"] < 1e-4, entry
    assert model["max_error"] == max(model["targets"][t]["max_error"] for t in ("torch", "onnx"))
    assert records["tf2/ckpt"]["status"] == "failed" and "TF2 object-based" in records["tf2/ckpt"]["reason"]
    assert f"{model['max_error']:.2e}" in (outdir / batch.REPORT_MARKDOWN).read_text()
    again = {r.id: r.to_dict() for r in run_batch([tree], outdir, targets="torch,onnx", verify=True, jobs=2).models}
    assert again["model.ckpt"]["status"] == "up to date" and again["model.ckpt"]["max_error"] == model["max_error"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray executor needs the ray extra")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_ray_executor_on_a_local_instance(local_ray, tmp_path, small):
    tree = tmp_path / "tree"
    _copy_v2(small.v2, tree / "a" / "model.ckpt")
    shutil.copy(small.v1, tree / "model_v1.ckpt")
    _corrupt(_copy_v2(small.v2, tree / "bad" / "model.ckpt"))
    report = run_batch([tree], tmp_path / "out", targets=TARGETS, executor="ray")
    records = {r.id: r.to_dict() for r in report.models}
    assert records["a/model.ckpt"]["status"] == "ok" and records["model_v1.ckpt"]["status"] == "ok"
    assert records["bad/model.ckpt"]["status"] == "failed" and "CRC32C" in records["bad/model.ckpt"]["reason"]
    assert "fc.weight" in _load(tmp_path / "out" / "model_v1.ckpt" / "model_v1.pth")
    again = run_batch([tree], tmp_path / "out", targets=TARGETS, executor="ray")
    assert {r.id: r.status for r in again.models}["a/model.ckpt"] == "up to date"


@pytest.mark.parametrize("args, message", [
    (["--to", "torch,tensorflow"], "error: unknown target tensorflow; choose from torch, keras, onnx"),
    (["--executor", "spark"], "Invalid value for '--executor'"),
    (["--address", "auto"], "error: --address auto names a Ray cluster; add --executor ray"),
])
def test_usage_errors_are_one_line(tmp_path, small, args, message):
    result = _cli(small.root, "-o", tmp_path / "out", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_sources_without_a_checkpoint_are_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ConvertError, match="no checkpoint found"):
        run_batch([empty], tmp_path / "out")


def test_a_checkpoint_given_by_its_files_is_named_after_the_checkpoint(tmp_path, small):
    index = small.v2.with_name(small.v2.name + ".index")
    data = small.v2.with_name(small.v2.name + ".data-00000-of-00001")
    assert [m.id for m in discover([index])] == ["model.ckpt"]
    with pytest.raises(ConvertError, match="given twice"):
        discover([index, data])
