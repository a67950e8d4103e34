"""Shared fixtures: the committed small checkpoints and full-size ones generated once per machine."""

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from converter import reference

# test modules import TensorFlow directly; torch's native libraries must be loaded before it
reference.preload_before_tensorflow()

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SMALL = FIXTURES / "inception_v3"
CACHE = pathlib.Path(os.environ.get("CKPT_CONVERT_TEST_CACHE", ROOT / ".cache" / "fixtures"))


class Fixture:
    """One fixture directory: checkpoints, golden input and outputs, and how they were made."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.v2 = self.root / "model.ckpt"
        self.v1 = self.root / "model_v1.ckpt"
        self.train = self.root / "train" / f"model.ckpt-{self.meta['global_step']}"

    @property
    def input(self):
        return np.load(self.root / "golden_input.npy")

    def golden(self, ema=False):
        with np.load(self.root / ("golden_ema.npz" if ema else "golden.npz")) as data:
            return dict(data)


@pytest.fixture(scope="session")
def small():
    """The committed depth-multiplied InceptionV3 fixture (V2, V1, training-style, golden outputs)."""
    return Fixture(SMALL)


@contextlib.contextmanager
def scratch(tmp_path_factory, name):
    """A temporary folder for a fixture wider than one test, removed when that fixture is torn down.

    ``tmp_path`` folders go when their test passes; ``mktemp`` ones would stay until the session ends."""
    folder = tmp_path_factory.mktemp(name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def link_checkpoint(prefix, to):
    """Symbolic links to checkpoint ``prefix``'s files (``.index``, data shards, ``.meta``) as ``to``'s."""
    to.parent.mkdir(parents=True, exist_ok=True)
    for path in prefix.parent.glob(prefix.name + ".*"):
        (to.parent / (to.name + path.name[len(prefix.name):])).symlink_to(path)


def link_checkpoints(tree, checkpoints):
    """A fleet's folder tree, ``{folder: checkpoint prefix}``, of symbolic links to the checkpoints' files."""
    for folder, checkpoint in checkpoints.items():
        (tree / folder).mkdir(parents=True)
        link_checkpoint(checkpoint, tree / folder / checkpoint.name)
    return tree


def batch_verify_tree(tmp_path, checkpoints, timeout=600):
    """``batch --to torch,onnx --verify -j 2`` over a tree of ``checkpoints`` (``link_checkpoints``): each
    model's record by id, every one checked converted and verified through both targets."""
    pytest.importorskip("onnxruntime", reason="the batch writes and verifies ONNX ports")
    pytest.importorskip("tensorflow", reason="--verify runs TF-Slim's network")
    from converter import batch

    tree = link_checkpoints(tmp_path / "tree", checkpoints)
    outdir = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "converter", "batch", str(tree), "-o", str(outdir),
                             "--to", "torch,onnx", "--verify", "-j", "2"], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    report = {record["id"]: record for record in json.loads((outdir / batch.REPORT_JSON).read_text())["models"]}
    for record in report.values():
        assert record["status"] == "ok", record
        assert {target: entry["status"] for target, entry in record["targets"].items()} == {"torch": "ok",
                                                                                           "onnx": "ok"}
    return report


def _cached(name, key, write):
    """``CACHE/NAME-KEY``, written by ``write(folder)`` once per key: one pytest-xdist worker writes, the
    others wait. Copies of ``name`` cached under other keys (by earlier generating code) are removed."""
    target = CACHE / f"{name}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "meta.json").exists():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            write(staging)
            staging.rename(target)
            for stale in CACHE.glob(f"{name}-*"):
                if stale != target and stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
    return target


def _make_cached(name, **options):
    """Generate a fixture with fixtures/make_fixtures.py once per content of the generating code."""
    sys.path.insert(0, str(FIXTURES))
    import make_fixtures

    code = b"".join(p.read_bytes() for p in (FIXTURES / "make_fixtures.py", ROOT / "converter" / "reference.py"))
    key = hashlib.sha256(code + json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return Fixture(_cached(name, key, lambda folder: make_fixtures.make_fixtures(folder, **options)))


@pytest.fixture(scope="session")
def full():
    """Full-size InceptionV3 (depth_multiplier 1.0, V2 only), generated in the test session and cached."""
    pytest.importorskip("tensorflow", reason="full-size fixtures are written by TensorFlow")
    return _make_cached("inception_v3_full", depth_multiplier=1.0, kinds=("v2",))


# Architectures whose fixtures the test session generates, and make_fixtures options: tf-slim's VGG-16/19,
# AlexNet v2, Inception V1/V2 and ResNets take no depth multiplier (and the VGG, AlexNet and V1 classifiers
# need the full input size), so no small checkpoint of them exists (VGG-16 528 MB, VGG-19 548, AlexNet 192,
# Inception V1 26, V2 43, ResNet-v1-50 98; ResNet-152 and ResNet-v2-200 about 240 and 260 MB). Full size,
# V2 only, golden outputs on the seeded batch. ResNets take any input size: the others are written and
# compared at 64x64 (keras.applications' ResNetV2 takes it too).
GENERATED = {
    "vgg_16": {},
    "vgg_19": {},
    "alexnet_v2": {},
    "inception_v1": {},
    "inception_v2": {},
    "resnet_v1_50": {},
    **{f"resnet_v{version}_{depth}": {"image_size": 64} for version in (1, 2) for depth in (50, 101, 152, 200)
       if (version, depth) != (1, 50)},
    # full-width MobileNets (17 and 14 MB; the committed fixtures are the zoo's smallest) at inputs the zoo trained
    "mobilenet_v1": {"depth_multiplier": 1.0, "image_size": 160},
    "mobilenet_v2": {"depth_multiplier": 1.0, "image_size": 128},
}


# Fine-tunes as legacy fleets hold them, written by the real tf-slim networks (generated and cached per
# machine): other class counts, no auxiliary head, another scope under an outer prefix with a layer of the
# user's own beside the network, Momentum slots and EMA shadows, and inputs other than the default
# (TF-Slim then sizes and names InceptionV3's auxiliary kernel after the input: Conv2d_2a_3x3 at 224).
FINETUNES = {
    # slim's flowers: 5 classes, no background class; a training checkpoint with Momentum slots and EMA shadows
    "inception_v3_flowers": dict(architecture="inception_v3", depth_multiplier=0.1, num_classes=5,
                                 kinds=("v2", "train"), optimizer="momentum"),
    # keras.applications and torchvision build full-size networks only
    "inception_v3_flowers_full": dict(architecture="inception_v3", depth_multiplier=1.0, num_classes=5, kinds=("v2",)),
    "inception_v3_scoped": dict(architecture="inception_v3", depth_multiplier=0.1, num_classes=7, kinds=("v2",),
                                network_options={"scope": "FlowerNet", "create_aux_logits": False},
                                prefix="tower_0", extra_head="ExtraHead/fc"),
    "inception_v3_224": dict(architecture="inception_v3", depth_multiplier=0.1, num_classes=1001, kinds=("v2",),
                             image_size=224),
    "inception_v3_160": dict(architecture="inception_v3", depth_multiplier=0.1, num_classes=12, kinds=("v2",),
                             image_size=160),
    "inception_v1_ft": dict(architecture="inception_v1", num_classes=10, kinds=("v2",)),
    "resnet_v1_50_ft": dict(architecture="resnet_v1_50", num_classes=3, kinds=("v2",)),
    "vgg_16_ft": dict(architecture="vgg_16", num_classes=6, kinds=("v2",)),
    # a separable first layer under another scope and an outer prefix
    "inception_v2_ft": dict(architecture="inception_v2", num_classes=5, kinds=("v2",),
                            network_options={"scope": "MyNet"}, prefix="tower_0"),
    # a MobileNet V1 fine-tune at another width and input, under another scope, with EMA shadows
    "mobilenet_v1_flowers": dict(architecture="mobilenet_v1", depth_multiplier=0.5, num_classes=5, image_size=160,
                                 kinds=("v2", "train"), network_options={"scope": "FlowerNet"}),
    # an Object Detection API SSD checkpoint's backbone: MobileNet V2 headless under FeatureExtractor/, an extra
    # feature layer under its scope and box predictors beside it (ssd_mobilenet_v2's width 1.0)
    "mobilenet_v2_ssd": dict(architecture="mobilenet_v2", depth_multiplier=1.0, network_options={}, kinds=("v2",),
                             image_size=96, prefix="FeatureExtractor", headless=True,
                             extra_head="MobilenetV2/layer_19_1_Conv2d_2_1x1_256",
                             outer_heads=("BoxPredictor_0/BoxEncodingPredictor", "BoxPredictor_0/ClassPredictor")),
}


@pytest.fixture(scope="session")
def finetune():
    """``finetune(name)``: a fine-tuned checkpoint of ``FINETUNES``, generated once per machine and cached."""
    pytest.importorskip("tensorflow", reason="fine-tuned checkpoints are written by TensorFlow")

    def make(name):
        return _make_cached(name, **FINETUNES[name])

    return make


@pytest.fixture(scope="session")
def zoo():
    """``zoo(architecture)``: its full-size fixture, generated once per machine and cached."""
    pytest.importorskip("tensorflow", reason="full-size fixtures are written by TensorFlow")

    def make(architecture):
        assert architecture in GENERATED, architecture
        return _make_cached(f"{architecture}_full", architecture=architecture, kinds=("v2",), **GENERATED[architecture])

    return make


class MetaFixture:
    """A network saved in training mode by fixtures/make_meta_fixtures.py: checkpoint, .meta, golden outputs."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.info = json.loads((self.root / "meta.json").read_text())
        self.checkpoint = self.root / "model.ckpt"
        self.graph = self.root / "model.ckpt.meta"

    @property
    def input(self):
        return np.load(self.root / "golden_input.npy")

    def golden(self, ema=False):
        with np.load(self.root / ("golden_ema.npz" if ema else "golden.npz")) as data:
            return dict(data)

    def run_as_saved(self):
        """The logits TensorFlow computes running the saved .meta graph as it is (training-mode batch norms
        on the batch's statistics, dropout live): what a converter that keeps the training graph gives."""
        tf, _ = reference.import_tensorflow()
        with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
            saver = tf.compat.v1.train.import_meta_graph(str(self.graph), clear_devices=True)
            saver.restore(session, str(self.checkpoint))
            return session.run("Net/SpatialSqueeze:0", {"images:0": self.input})


@pytest.fixture(scope="session")
def meta_net():
    """``meta_net(name)``: a network of ``make_meta_fixtures.NETWORKS`` with its .meta, generated once per machine.

    Generated in a subprocess: it switches TensorFlow to TF 1's control flow, which must not leak into the tests.
    """
    pytest.importorskip("tensorflow", reason="training graphs are written by TensorFlow")
    script = FIXTURES / "make_meta_fixtures.py"
    code = b"".join(p.read_bytes() for p in (script, FIXTURES / "make_fixtures.py", ROOT / "converter" / "reference.py"))

    def write(name, folder):
        made = subprocess.run([sys.executable, str(script), "--net", name, "--out", str(folder)],
                              capture_output=True, text=True)
        if made.returncode:
            pytest.fail(f"make_meta_fixtures.py --net {name} failed:\n{made.stderr[-3000:]}")

    def make(name):
        key = hashlib.sha256(code + name.encode()).hexdigest()[:12]
        return MetaFixture(_cached(f"meta_{name}", key, lambda folder: write(name, folder)))

    return make
