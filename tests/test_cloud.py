"""s3:// and gs:// end to end, against real API servers this session starts on 127.0.0.1.

S3: moto's server mode (every request goes through botocore/s3fs over HTTP, as against AWS).
Google Cloud Storage: gcp-storage-emulator's JSON API server, through gcsfs. Each test has buckets of its own.
"""

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from conftest import SMALL

pytest.importorskip("s3fs", reason="s3:// needs the cloud extra (pip install '.[cloud]')")
moto_server = pytest.importorskip("moto.server", reason="the S3 API server is moto[server] (the test extra)")

INDEX = "model.ckpt.index"
DATA = "model.ckpt.data-00000-of-00001"
CLI_TIMEOUT = 300


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"no server came up on 127.0.0.1:{port}")


class Store:
    """A running server: the environment that points clients at it, and a client for the tests' own looks."""

    def __init__(self, scheme, env, fs):
        self.scheme, self.env, self.fs = scheme, env, fs

    def bucket(self):
        name = f"t{uuid.uuid4().hex[:20]}"
        self.fs.mkdir(name)
        return name

    def url(self, key):
        return f"{self.scheme}://{key}"

    def upload_fixture(self, bucket, folder, files=(INDEX, DATA)):
        for name in files:
            self.fs.put_file(str(SMALL / name), f"{bucket}/{folder}/{name}")
        return self.url(f"{bucket}/{folder}/model.ckpt")

    def keys(self, bucket):
        return sorted(key.split("/", 1)[1] for key in self.fs.find(bucket))

    def cli(self, *args, env=None, check=None):
        result = subprocess.run([sys.executable, "-m", "converter", *map(str, args)], env=env or self.env,
                                capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if check is not None:
            assert result.returncode == check, result.stderr[-3000:]
        return result


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 at a free port, for the whole session; stopped at its end."""
    import s3fs

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _wait_listening(port)
        endpoint = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                   AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True,
                              use_listings_cache=False)
        yield Store("s3", env, fs)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs():
    """gcp-storage-emulator's GCS JSON API on 127.0.0.1 at a free port, in memory; stopped at session end."""
    if importlib.util.find_spec("gcsfs") is None:
        pytest.skip("gs:// needs the cloud extra (pip install '.[cloud]')")
    emulator = pytest.importorskip("gcp_storage_emulator.server",
                                   reason="the GCS API server is gcp-storage-emulator (the test extra)")
    port = _free_port()
    # the emulator serves the JSON API only, not the gRPC control API gcsfs probes buckets with; gcsfs
    # reads this when imported, and reads the emulator's address when a file system is made
    settings = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        import gcsfs

        _wait_listening(port)
        fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True, use_listings_cache=False)
        yield Store("gs", dict(os.environ), fs)
    finally:
        server.stop()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def local_port(tmp_path_factory):
    """The .pth ckpt-convert writes from the local fixture: what every remote port must equal (``_same_port``)."""
    out = tmp_path_factory.mktemp("local") / "model.pth"
    subprocess.run([sys.executable, "-m", "converter", "--to", "torch", str(SMALL / "model.ckpt"), "-o", str(out)],
                   check=True, capture_output=True, timeout=CLI_TIMEOUT)
    return out.read_bytes()


def _same_port(remote, local):
    """A port written from a bucket holds the local port's tensors, bit for bit, and its record but for the
    source: the checkpoint's URL, and its digest, which a store keeps its own way (S3's ETag, GCS's MD5)."""
    torch = pytest.importorskip("torch", reason="reads the ports")
    from converter import provenance

    def read(data):
        state = torch.load(io.BytesIO(data), weights_only=True)
        return state, dict(state._metadata[provenance.PTH_KEY])

    (theirs, their_record), (ours, our_record) = read(remote), read(local)
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[key], ours[key]) for key in ours)
    assert their_record.pop("checkpoint").startswith(("s3://", "gs://"))
    assert their_record.pop("checkpoint_blake2b") and our_record.pop("checkpoint") and our_record.pop("checkpoint_blake2b")
    assert their_record == our_record


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_convert_bucket_to_bucket(store, request, local_port):
    store = request.getfixturevalue(store)
    source, out = store.bucket(), store.bucket()
    url = store.upload_fixture(source, "fleet/iv3")
    target = store.url(f"{out}/ported/iv3.pth")
    result = store.cli("--to", "torch", url, "-o", target, "--json", check=0)
    summary = json.loads(result.stdout)
    stored = (SMALL / INDEX).stat().st_size + (SMALL / DATA).stat().st_size
    assert summary["output"] == target and summary["bytes_stored"] == stored
    # a full port takes every model variable: the whole data file, each byte once
    assert summary["bytes_read"] == stored
    assert store.keys(out) == ["ported/iv3.pth"]
    _same_port(store.fs.cat_file(f"{out}/ported/iv3.pth"), local_port)

    again = store.cli("--to", "torch", url, "-o", target)
    _one_line_error(again, target, "already exists", "--force")
    etag = store.fs.info(f"{out}/ported/iv3.pth").get("ETag")
    store.cli("--to", "torch", url, "-o", target, "--force", check=0)
    _same_port(store.fs.cat_file(f"{out}/ported/iv3.pth"), local_port)
    assert store.scheme != "s3" or store.fs.info(f"{out}/ported/iv3.pth").get("ETag") == etag


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_headless_port_reads_less_than_the_file(store, request):
    store = request.getfixturevalue(store)
    bucket = store.bucket()
    url = store.upload_fixture(bucket, "iv3")
    full = json.loads(store.cli("--to", "torch", url, "-o", store.url(f"{bucket}/full.pth"), "--json",
                                check=0).stdout)
    headless = json.loads(store.cli("--to", "torch", url, "-o", store.url(f"{bucket}/headless.pth"), "--no-top",
                                    "--no-aux", "--json", check=0).stdout)
    assert headless["bytes_read"] < 0.75 * headless["bytes_stored"]
    assert headless["bytes_read"] < full["bytes_read"]


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_inspect_from_the_index_alone(store, request, tmp_path):
    store = request.getfixturevalue(store)
    bucket = store.bucket()
    url = store.upload_fixture(bucket, "triage", files=(INDEX,))
    remote = json.loads(store.cli("inspect", url, "--json", check=0).stdout)
    assert remote["architecture"] == "inception_v3"
    assert remote["bytes_read"] == (SMALL / INDEX).stat().st_size
    assert remote["totals"]["model"]["variables"] == 388
    # locally too: a folder holding the .index alone
    (tmp_path / INDEX).write_bytes((SMALL / INDEX).read_bytes())
    local = json.loads(store.cli("inspect", tmp_path / "model.ckpt", "--json", check=0).stdout)
    assert {k: v for k, v in local.items() if k != "path"} == {k: v for k, v in remote.items() if k != "path"}
    # converting needs the data: one line naming the missing shard, nothing written
    result = store.cli("--to", "torch", url, "-o", store.url(f"{bucket}/out.pth"))
    _one_line_error(result, DATA, "missing")
    assert store.keys(bucket) == [f"triage/{INDEX}"]


def test_truncated_object(s3):
    bucket = s3.bucket()
    s3.fs.put_file(str(SMALL / INDEX), f"{bucket}/m/{INDEX}")
    data = (SMALL / DATA).read_bytes()
    s3.fs.pipe(f"{bucket}/m/{DATA}", data[: len(data) // 2])
    result = s3.cli("--to", "torch", s3.url(f"{bucket}/m/model.ckpt"), "-o", s3.url(f"{bucket}/out/model.pth"))
    _one_line_error(result, "truncated", DATA)
    assert s3.keys(bucket) == [f"m/{DATA}", f"m/{INDEX}"]


def test_corrupted_bytes_fail_their_checksum(s3):
    bucket = s3.bucket()
    s3.fs.put_file(str(SMALL / INDEX), f"{bucket}/m/{INDEX}")
    data = bytearray((SMALL / DATA).read_bytes())
    data[len(data) // 2] ^= 0xFF
    s3.fs.pipe(f"{bucket}/m/{DATA}", bytes(data))
    result = s3.cli("--to", "torch", s3.url(f"{bucket}/m/model.ckpt"), "-o", s3.url(f"{bucket}/model.pth"))
    _one_line_error(result, "CRC32C")
    assert "model.pth" not in s3.keys(bucket)


def test_missing_credentials(s3):
    bucket = s3.bucket()
    url = s3.upload_fixture(bucket, "m")
    env = {k: v for k, v in s3.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = s3.cli("inspect", url, env=env)
    _one_line_error(result, "no credentials", "AWS_ACCESS_KEY_ID")
    result = s3.cli("--to", "torch", SMALL / "model.ckpt", "-o", s3.url(f"{bucket}/out.pth"), env=env)
    _one_line_error(result, "no credentials")
    assert "out.pth" not in s3.keys(bucket)


def test_missing_bucket(s3, tmp_path):
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    _one_line_error(s3.cli("inspect", s3.url(f"{missing}/model.ckpt")), f"bucket {missing} does not exist")
    _one_line_error(s3.cli("--to", "torch", SMALL / "model.ckpt", "-o", s3.url(f"{missing}/model.pth")),
                    f"bucket {missing}", "does not exist")
    _one_line_error(s3.cli("batch", SMALL, "-o", s3.url(f"{missing}/ported")), f"bucket {missing}")
    assert not s3.fs.exists(missing)


def test_missing_object_names_the_file(s3):
    bucket = s3.bucket()
    _one_line_error(s3.cli("inspect", s3.url(f"{bucket}/nothing/model.ckpt")), "no such checkpoint")


def test_unsupported_scheme_is_refused():
    result = subprocess.run([sys.executable, "-m", "converter", "inspect", "ftp://host/model.ckpt"],
                            capture_output=True, text=True, timeout=CLI_TIMEOUT)
    # inspect takes a plain path: the reader refuses the scheme rather than looking for a local "ftp:" folder
    _one_line_error(result, "ftp://", "not a supported store")


def test_local_paths_never_import_fsspec(tmp_path):
    code = (
        "import sys\n"
        "from converter.cli import main\n"
        f"for args in (['inspect', {str(SMALL / 'model.ckpt')!r}], "
        f"['--to', 'torch', {str(SMALL / 'model.ckpt')!r}, '-o', {str(tmp_path / 'm.pth')!r}]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as stop:\n"
        "        assert not stop.code, stop.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs', 'gcsfs', 'botocore'))\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "m.pth").is_file()


def test_without_the_cloud_extra_the_error_names_it():
    code = ("import sys\nsys.modules['s3fs'] = None\nfrom converter.cli import main\n"
            "main(['inspect', 's3://bucket/model.ckpt'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    _one_line_error(result, "pip install 'ckpt-convert[cloud]'")


def _fleet(store, bucket, count):
    for number in range(count):
        store.upload_fixture(bucket, f"models/m{number}")
    return store.url(f"{bucket}/models")


def _recorded(store, state):
    """Whether a model's state.json records its torch output as written."""
    try:
        return json.loads(store.fs.cat_file(state))["targets"]["torch"]["status"] == "ok"
    except (FileNotFoundError, KeyError, ValueError):
        return False


def test_batch_bucket_to_bucket_resumes_after_a_kill(s3, local_port):
    source, out = s3.bucket(), s3.bucket()
    models = _fleet(s3, source, 4)
    outdir = s3.url(f"{out}/ported")
    command = [sys.executable, "-m", "converter", "batch", models, "-o", outdir, "-j", "1"]
    run = subprocess.Popen(command, env=s3.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while not _recorded(s3, f"{out}/ported/m0/model.ckpt/state.json"):
            assert run.poll() is None, run.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the batch wrote no output in time"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    written = [key for key in s3.keys(out) if key.endswith(".pth")]
    assert written and len(written) < 4
    for key in written:  # whatever the kill left under a final name is whole
        _same_port(s3.fs.cat_file(f"{out}/{key}"), local_port)
    assert not [key for key in s3.keys(out) if key.endswith(".partial")]
    assert "ported/report.json" not in s3.keys(out)

    result = s3.cli("batch", models, "-o", outdir, "-j", "2", check=0)
    report = json.loads(s3.fs.cat_file(f"{out}/ported/report.json"))
    statuses = {record["id"]: record["status"] for record in report["models"]}
    assert set(statuses) == {f"m{n}/model.ckpt" for n in range(4)}, statuses
    assert statuses["m0/model.ckpt"] == "up to date"
    assert set(statuses.values()) <= {"ok", "up to date"}, result.stdout
    for number in range(4):
        _same_port(s3.fs.cat_file(f"{out}/ported/m{number}/model.ckpt/model.pth"), local_port)
    assert "ported/report.md" in s3.keys(out)

    # resume is keyed on content: every model up to date, no checkpoint byte read; a changed object is redone
    s3.cli("batch", models, "-o", outdir, check=0)
    again = json.loads(s3.fs.cat_file(f"{out}/ported/report.json"))
    assert {record["status"] for record in again["models"]} == {"up to date"}
    assert all(entry["bytes_read"] == 0 for record in again["models"] for entry in record["targets"].values())
    s3.fs.put_file(str(SMALL / "train" / "model.ckpt-1234.index"), f"{source}/models/m1/{INDEX}")
    s3.fs.put_file(str(SMALL / "train" / "model.ckpt-1234.data-00000-of-00001"), f"{source}/models/m1/{DATA}")
    s3.cli("batch", models, "-o", outdir, check=0)
    changed = json.loads(s3.fs.cat_file(f"{out}/ported/report.json"))
    statuses = {record["id"]: record["status"] for record in changed["models"]}
    assert statuses == {"m0/model.ckpt": "up to date", "m1/model.ckpt": "ok", "m2/model.ckpt": "up to date",
                        "m3/model.ckpt": "up to date"}


def test_batch_manifest_in_a_bucket(s3):
    bucket = s3.bucket()
    _fleet(s3, bucket, 2)
    s3.fs.pipe(f"{bucket}/fleet.yaml", b"- path: models/m0/model.ckpt\n  id: first\n"
                                      b"- {path: models/m1/model.ckpt, id: second, targets: onnx}\n")
    pytest.importorskip("onnx", reason="the manifest's second row writes ONNX (the onnx extra)")
    s3.cli("batch", s3.url(f"{bucket}/fleet.yaml"), "-o", s3.url(f"{bucket}/out"), check=0)
    keys = s3.keys(bucket)
    assert "out/first/first.pth" in keys and "out/second/second.onnx" in keys
    assert "out/first/state.json" in keys and "out/report.json" in keys


def test_batch_in_a_gcs_bucket_resumes(gcs):
    source, out = gcs.bucket(), gcs.bucket()
    models = _fleet(gcs, source, 2)
    outdir = gcs.url(f"{out}/ported")
    gcs.cli("batch", models, "-o", outdir, "-j", "1", check=0)
    first = json.loads(gcs.fs.cat_file(f"{out}/ported/report.json"))
    assert {record["status"] for record in first["models"]} == {"ok"}
    gcs.cli("batch", models, "-o", outdir, "-j", "1", check=0)
    second = json.loads(gcs.fs.cat_file(f"{out}/ported/report.json"))
    assert {record["status"] for record in second["models"]} == {"up to date"}
