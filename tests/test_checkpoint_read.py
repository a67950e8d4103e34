"""The checkpoint reader against TensorFlow's own: bit-identical on committed and generated checkpoints."""

import mmap
import pathlib

import numpy as np
import pytest

from converter.checkpoint import TensorInfo, open_checkpoint
from converter.checkpoint._table import SNAPPY_COMPRESSION, Table

tf = pytest.importorskip("tensorflow", reason="the reference reader is TensorFlow's")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SNAPPY = ROOT / "fixtures" / "real" / "half_plus_two_snappy" / "variables"
SNAPPY_VALUES = {"a": 0.5, "a2": 0.5, "b": 2.0, "c": 3.0, "c2": 3.0}

DTYPES = [
    tf.float16, tf.bfloat16, tf.float32, tf.float64,
    tf.int8, tf.int16, tf.int32, tf.int64,
    tf.uint8, tf.uint16, tf.uint32, tf.uint64,
    tf.bool, tf.string,
]  # fmt: skip
SHAPES = [(), (0,), (5,), (2, 0, 3), (3, 4), (2, 3, 4)]
ODD_NAMES = ["ünïcødé/変数/weights", "a/b/c/d/e/f", "x" * 300, "with space/and:colon", "ÿ\x01\x7f"]


def tf_reference(path, sliced=None):
    """Every variable as ``tf.train.load_checkpoint`` reads it; ``sliced`` gives the values of V1
    partitioned variables, which TensorFlow's reader refuses ("Sliced checkpoints are not supported")."""
    reader = tf.train.load_checkpoint(str(path))
    sliced = sliced or {}
    return {name: sliced[name] if name in sliced else reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_identical(ckpt, expected):
    """Names, dtypes, shapes and every bit of every value equal to TensorFlow's."""
    assert ckpt.names() == sorted(expected)
    assert len(ckpt) == len(expected) and list(ckpt) == ckpt.names()
    for name, want in expected.items():
        # TensorFlow returns a string scalar as plain bytes
        want = np.array(want, dtype=object) if isinstance(want, bytes) else np.asarray(want)
        got = ckpt.read(name)
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert not got.flags.writeable, name
        if want.dtype == object:
            assert list(got.flat) == [bytes(value) for value in want.flat], name
        else:
            assert got.tobytes() == want.tobytes(), name
        assert ckpt.info(name) == TensorInfo(name, want.dtype, want.shape, ckpt.info(name).nbytes)
        if want.dtype != object:
            assert ckpt.info(name).nbytes == want.nbytes


def seeded_value(dtype, shape, rng):
    """Seeded values over the dtype's whole range; floats include NaN, infinities and -0."""
    count = int(np.prod(shape))
    if dtype == tf.string:
        return np.array([rng.bytes(int(n)) for n in rng.integers(0, 20, count)], dtype=object).reshape(shape)
    if dtype == tf.bool:
        return rng.integers(0, 2, shape).astype(bool)
    numpy_dtype = dtype.as_numpy_dtype
    if dtype.is_floating:
        flat = (rng.standard_normal(count) * 100).astype(numpy_dtype)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=numpy_dtype)[:count]
        flat[: len(specials)] = specials
        return flat.reshape(shape)
    info = np.iinfo(numpy_dtype)
    return rng.integers(info.min, info.max, shape, dtype=numpy_dtype, endpoint=True)


def save_v2(prefix, tensors, slices=None):
    """Write ``{name: value}`` with the SaveV2 op; ``slices`` gives shape-and-slice specs per name."""
    names = list(tensors)
    specs = [(slices or {}).get(name, "") for name in names]
    values = [tensors[name] if isinstance(tensors[name], tf.Tensor) else tf.constant(tensors[name]) for name in names]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=specs, tensors=values)


@pytest.mark.parametrize("form", ["v2", "v1", "train"])
def test_committed_fixtures_match_tensorflow(small, form):
    path = {"v2": small.v2, "v1": small.v1, "train": small.train}[form]
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == ("v1" if form == "v1" else "v2")
        assert_identical(ckpt, tf_reference(path))


def test_real_snappy_compressed_index(tmp_path):
    index = (SNAPPY.parent / "variables.index").read_bytes()
    offset, size = Table(SNAPPY.parent / "variables.index", index)._index_handles[0]
    assert index[offset + size] == SNAPPY_COMPRESSION  # the point of this fixture
    with open_checkpoint(SNAPPY) as ckpt:
        assert_identical(ckpt, tf_reference(SNAPPY))
        assert {name: float(ckpt.read(name)) for name in ckpt} == SNAPPY_VALUES


def test_dtype_shape_name_sweep(tmp_path):
    rng = np.random.default_rng(0)
    cases = [(f"{dtype.name}/{i}", dtype, shape) for dtype in DTYPES for i, shape in enumerate(SHAPES)]
    cases += [(name, DTYPES[i % len(DTYPES)], (3, 2)) for i, name in enumerate(ODD_NAMES)]
    values = {name: seeded_value(dtype, shape, rng) for name, dtype, shape in cases}
    values["strings/odd bytes"] = np.array([b"", b"\x00", b"\xff" * 300, "é".encode()], dtype=object)
    dtypes = {name: dtype for name, dtype, _ in cases}
    save_v2(tmp_path / "sweep", {name: tf.constant(value, dtype=dtypes.get(name)) for name, value in values.items()})
    with open_checkpoint(tmp_path / "sweep") as ckpt:
        assert ckpt.format == "v2"
        assert_identical(ckpt, tf_reference(tmp_path / "sweep"))
        for name, value in values.items():  # and equal to what was written
            got = ckpt.read(name)
            assert list(got.flat) == list(value.flat) if value.dtype == object else got.tobytes() == value.tobytes()


def test_partitioned_variable_across_merged_shards(tmp_path):
    """SaveV2 slices in three bundles merged into one: three data shards, a 3-D tensor in 4 slices."""
    rng = np.random.default_rng(1)
    full = rng.standard_normal((4, 6, 2)).astype(np.float32)
    ints = rng.integers(-9, 9, (5, 3)).astype(np.int64)
    save_v2(tmp_path / "p0", {"w": full[0:2, 0:3], "i": ints[0:2]}, {"w": "4 6 2 0,2:0,3:-", "i": "5 3 0,2:-"})
    save_v2(tmp_path / "p1", {"w": full[0:2, 3:6], "s": np.array([b"x", b"y"], dtype=object)}, {"w": "4 6 2 0,2:3,3:-"})
    save_v2(tmp_path / "p2", {"w": full[2:4], "i": ints[2:5]}, {"w": "4 6 2 2,2:-:-", "i": "5 3 2,3:-"})
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[str(tmp_path / p) for p in ("p0", "p1", "p2")], destination_prefix=str(tmp_path / "m")
    )
    assert len(list(tmp_path.glob("m.data-*-of-00003"))) == 3
    with open_checkpoint(tmp_path / "m") as ckpt:
        assert ckpt.names() == ["i", "s", "w"]  # slice entries hide behind their full entries
        assert_identical(ckpt, tf_reference(tmp_path / "m"))
        np.testing.assert_array_equal(ckpt.read("w"), full)
        np.testing.assert_array_equal(ckpt.read("i"), ints)


def _graph_checkpoint(tmp_path, write_version, sharded):
    """A TF1 Saver checkpoint of plain and fixed_size_partitioner variables on two CPU devices."""
    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/cpu:0"):
            part = tf.compat.v1.get_variable(
                "scope/part", shape=[10, 4], partitioner=tf.compat.v1.fixed_size_partitioner(3),
                initializer=tf.compat.v1.random_normal_initializer(seed=1),
            )
            tf.compat.v1.get_variable("scope/plain", initializer=np.arange(6, dtype=np.int64).reshape(2, 3))
        with tf.device("/cpu:1"):
            tf.compat.v1.get_variable("other/weights", initializer=np.linspace(-1, 1, 12).reshape(3, 4))
            tf.compat.v1.get_variable("other/scalar", initializer=np.float32(7.5))
            tf.compat.v1.get_variable(
                "other/part2", shape=[3, 9], partitioner=tf.compat.v1.fixed_size_partitioner(2, axis=1),
                initializer=tf.compat.v1.random_uniform_initializer(seed=2),
            )
        saver = tf.compat.v1.train.Saver(write_version=write_version, sharded=sharded)
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(graph=graph, config=config) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            path = saver.save(session, str(tmp_path / "model.ckpt"), write_meta_graph=False)
            full = {
                "scope/part": session.run(tf.concat(list(part), axis=0)),
                "other/part2": session.run(tf.concat(list(graph.get_collection("variables", "other/part2")), axis=1)),
            }
    return pathlib.Path(path), full


def test_v1_saver_with_partitioned_variables(tmp_path):
    path, full = _graph_checkpoint(tmp_path, tf.compat.v1.train.SaverDef.V1, sharded=False)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "v1"
        assert "scope/part" in ckpt and "scope/part/part_0" not in ckpt
        assert_identical(ckpt, tf_reference(path, sliced=full))
        assert full["other/part2"].shape == (3, 9)


def test_sharded_v2_saver_over_two_devices(tmp_path):
    path, full = _graph_checkpoint(tmp_path, tf.compat.v1.train.SaverDef.V2, sharded=True)
    assert len(list(tmp_path.glob("model.ckpt.data-*-of-00002"))) == 2
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "v2"
        assert_identical(ckpt, tf_reference(path))
        for name, value in full.items():
            assert ckpt.read(name).tobytes() == value.tobytes()


def test_tf2_object_based_checkpoint(tmp_path):
    module = tf.Module()
    module.dense = tf.Module()
    module.dense.kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    module.dense.bias = tf.Variable(np.zeros(3, np.float16))
    module.step = tf.Variable(np.int64(42))
    path = tf.train.Checkpoint(model=module).write(str(tmp_path / "tf2" / "ckpt"))
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "tf2"
        assert "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE" in ckpt
        assert_identical(ckpt, tf_reference(path))


def _base_buffer(array):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_reads_are_zero_copy_views_of_the_file(small):
    with open_checkpoint(small.v2) as ckpt:
        name = "InceptionV3/Logits/Conv2d_1c_1x1/weights"
        array = ckpt.read(name)
        assert isinstance(_base_buffer(array), mmap.mmap)
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[...] = 0
    assert array.sum() == array.sum()  # still valid after close
    with open_checkpoint(small.v1) as ckpt:  # V1 float tensors are packed floats in the file, also viewed
        assert isinstance(_base_buffer(ckpt.read(name)), mmap.mmap)


def test_listing_maps_no_data_file(small, monkeypatch):
    from converter.checkpoint import _bundle

    maps = []
    real = _bundle.Bundle._map
    monkeypatch.setattr(_bundle.Bundle, "_map", lambda self, shard: maps.append(shard) or real(self, shard))
    with open_checkpoint(small.v2) as ckpt:
        infos = [ckpt.info(name) for name in ckpt]
        assert maps == [] and len(infos) == 388
        ckpt.read(ckpt.names()[0])
        assert len(maps) == 1


def test_the_comparison_catches_a_one_ulp_difference(small):
    with open_checkpoint(small.v2) as ckpt:
        reference = tf_reference(small.v2)
        name = ckpt.names()[0]
        reference[name] = np.nextafter(reference[name], np.float32(np.inf))
        with pytest.raises(AssertionError, match=name):
            assert_identical(ckpt, reference)


def test_sharded_v1_saver(tmp_path):
    """A V1 Saver with sharded=True writes model.ckpt-0000N-of-00002 and names them by a glob pattern."""
    path, full = _graph_checkpoint(tmp_path, tf.compat.v1.train.SaverDef.V1, sharded=True)
    assert path.name == "model.ckpt-?????-of-00002" and len(list(tmp_path.glob("model.ckpt-*-of-00002"))) == 2
    reference = tf_reference(path, sliced=full)
    for given in (path, tmp_path, tmp_path / "model.ckpt-00001-of-00002"):  # pattern, state file, one shard
        with open_checkpoint(given) as ckpt:
            assert (ckpt.format, ckpt.path) == ("v1", path)
            assert_identical(ckpt, reference)
    (tmp_path / "checkpoint").unlink()  # without a state file the two shards still make one checkpoint
    assert open_checkpoint(tmp_path).path == path
