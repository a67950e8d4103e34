"""Object stores: a batch of N models from a local S3 API server against the same from local disk,
and the bytes a port reads against the bytes the checkpoint stores.

The S3 server is moto's (the test extra) on 127.0.0.1; every run is the command line in a fresh
process, so imports, worker start-up and every request count. Needs the cloud and test extras.

    .venv/bin/python benchmarks/bench_cloud.py [--copies 8] [--jobs 2] [--checkpoint PREFIX]

``--checkpoint`` measures another V2 checkpoint (default: the bundled small InceptionV3; the
full-size one of bench_convert.py is ``.cache/bench/inception_v3_full/model.ckpt``).
"""

import argparse
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "inception_v3" / "model.ckpt"
BUCKET = "bench"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cli(env, *args):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "converter", *map(str, args)], env=env, capture_output=True,
                            text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"ckpt-convert {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--checkpoint", type=pathlib.Path, default=FIXTURE)
    args = parser.parse_args()

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request

    files = sorted(args.checkpoint.parent.glob(args.checkpoint.name + ".*"))
    files = [f for f in files if f.name.endswith(".index") or ".data-" in f.name]
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        fs = s3fs.S3FileSystem(key="bench", secret="bench", endpoint_url=endpoint)
        fs.mkdir(BUCKET)
        with tempfile.TemporaryDirectory(prefix="bench-cloud-") as scratch:
            tree = pathlib.Path(scratch, "models")
            for i in range(args.copies):
                (tree / f"m{i:02d}").mkdir(parents=True)
                for path in files:
                    (tree / f"m{i:02d}" / path.name).write_bytes(path.read_bytes())
                    fs.put_file(str(path), f"{BUCKET}/models/m{i:02d}/{path.name}")
            local_s, _ = _cli(env, "batch", tree, "-o", pathlib.Path(scratch, "out"), "-j", args.jobs)
            remote_s, _ = _cli(env, "batch", f"s3://{BUCKET}/models", "-o", f"s3://{BUCKET}/out", "-j", args.jobs)
            resume_s, _ = _cli(env, "batch", f"s3://{BUCKET}/models", "-o", f"s3://{BUCKET}/out", "-j", args.jobs)
        model = f"s3://{BUCKET}/models/m00/{args.checkpoint.name}"
        _, inspected = _cli(env, "inspect", model, "--json")
        _, full = _cli(env, "--to", "torch", model, "-o", f"s3://{BUCKET}/full.pth", "--json")
        _, headless = _cli(env, "--to", "torch", model, "-o", f"s3://{BUCKET}/headless.pth", "--no-top", "--no-aux",
                           "--json")
    finally:
        server.stop()
    full, headless, inspected = json.loads(full), json.loads(headless), json.loads(inspected)
    stored = full["bytes_stored"]
    print(f"{args.copies} copies of {args.checkpoint} ({stored / 1e6:.2f} MB each), -j {args.jobs}")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| batch from and to local disk | {local_s:.1f} s |")
    print(f"| batch from and to the local S3 server | {remote_s:.1f} s ({remote_s / local_s:.2f}x local) |")
    print(f"| rerun on the bucket (all up to date) | {resume_s:.1f} s |")
    print(f"| `inspect`: bytes read / stored | {inspected['bytes_read'] / stored:.2g} |")
    print(f"| full torch port: bytes read / stored | {full['bytes_read'] / stored:.3f} |")
    print(f"| `--no-top --no-aux` port: bytes read / stored | {headless['bytes_read'] / stored:.3f} |")


if __name__ == "__main__":
    main()
