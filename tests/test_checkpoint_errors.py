"""Bad input: each case a one-line CheckpointError naming the file and the problem, from the API and
the command line; a bounded fuzz over real files lets nothing else escape."""

import re
import shutil
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crafted import build_table, varint
from converter import cli
from converter.checkpoint import _crc, open_checkpoint
from converter.checkpoint._table import Table
from converter.errors import CheckpointError

V2_FILES = ("model.ckpt.index", "model.ckpt.data-00000-of-00001")
DT_VARIANT = 21
LOGITS = "InceptionV3/Logits/Conv2d_1c_1x1/weights"


def table_entries(path):
    return [(key, bytes(value)) for key, value in Table(path, path.read_bytes()).items()]


@pytest.fixture
def bundle(small, tmp_path):
    """A writable copy of the committed V2 fixture."""
    for name in V2_FILES:
        shutil.copy(small.root / name, tmp_path / name)
    return tmp_path / "model.ckpt"


def _index(bundle):
    return bundle.with_name("model.ckpt.index")


def _data(bundle):
    return bundle.with_name("model.ckpt.data-00000-of-00001")


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message and message
    return message


def _set_entry(bundle, name, new_value):
    entries = [(k, new_value(v) if k == name.encode() else v) for k, v in table_entries(_index(bundle))]
    _index(bundle).write_bytes(build_table(entries))


# --- the table builder above reproduces what TensorFlow writes, so crafted cases are real ones


@pytest.mark.parametrize("compression", [0, 1])
def test_rebuilt_index_reads_the_same(bundle, small, compression):
    _index(bundle).write_bytes(build_table(table_entries(small.root / V2_FILES[0]), compression))
    reference = open_checkpoint(small.v2)
    with open_checkpoint(bundle) as ckpt:
        assert ckpt.names() == reference.names()
        assert all(ckpt.read(n).tobytes() == reference.read(n).tobytes() for n in ckpt)


# --- each bad input, through the API


def test_truncated_index(bundle):
    index = _index(bundle).read_bytes()
    _index(bundle).write_bytes(index[: len(index) // 2])
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(bundle)
    assert _one_line(error) == f"{_index(bundle)}: bad magic number: not a TensorFlow checkpoint table, or truncated"
    _index(bundle).write_bytes(index[:10])
    with pytest.raises(CheckpointError, match=r"model.ckpt.index: only 10 bytes, shorter than a table footer"):
        open_checkpoint(bundle)


def test_bad_magic(bundle):
    _flip(_index(bundle), -1)
    with pytest.raises(CheckpointError, match=r"model.ckpt.index: bad magic number"):
        open_checkpoint(bundle)


@pytest.mark.parametrize("where", ["contents", "checksum"])
def test_block_crc_mismatch(bundle, where):
    index = Table(_index(bundle), _index(bundle).read_bytes())
    offset, size = index._index_handles[0]
    _flip(_index(bundle), offset + 3 if where == "contents" else offset + size + 2)
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(bundle)
    assert _one_line(error) == (
        f"{_index(bundle)}: block at offset {offset} fails its CRC32C check: the file is corrupted; copy it again"
    )


def test_unknown_block_compression(bundle, small):
    entries = table_entries(small.root / V2_FILES[0])
    table = bytearray(build_table(entries))
    handle = Table(_index(bundle), bytes(table))._index_handles[0]
    end = handle[0] + handle[1]
    table[end] = 7  # an unknown compression type, with a CRC that matches it
    table[end + 1 : end + 5] = struct.pack("<I", _crc.mask(_crc.crc32c(bytes(table[handle[0] : end + 1]))))
    _index(bundle).write_bytes(bytes(table))
    with pytest.raises(CheckpointError, match=r"model.ckpt.index: block at offset 0 has unknown compression type 7"):
        open_checkpoint(bundle)


def test_tensor_crc_mismatch_names_the_tensor(bundle, small):
    reference = open_checkpoint(small.v2)
    data = _data(bundle).read_bytes()
    target = reference.read(LOGITS).tobytes()
    _flip(_data(bundle), data.index(target) + len(target) // 2)
    with open_checkpoint(bundle) as ckpt:
        with pytest.raises(CheckpointError) as error:
            ckpt.read(LOGITS)
        message = _one_line(error)
        assert message.startswith(f"{_data(bundle)}: tensor '{LOGITS}' fails its CRC32C check")
        assert message.endswith("the data file is corrupted; copy it again")
        others = [n for n in ckpt if n != LOGITS]
        assert all(ckpt.read(n).tobytes() == reference.read(n).tobytes() for n in others)


def test_missing_data_shard(bundle):
    _data(bundle).unlink()
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(bundle)
    assert _one_line(error) == (
        f"{_index(bundle)}: missing data shard model.ckpt.data-00000-of-00001; "
        "copy every data file next to the .index file"
    )


def test_truncated_data_file(bundle):
    # the index says where every tensor ends: a short data file is refused on opening, before any read
    _data(bundle).write_bytes(_data(bundle).read_bytes()[:1000])
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(bundle)
    assert re.fullmatch(r".*data-00000-of-00001: '.*' and \d+ more entries lie past the end of the data file "
                        r"\(1000 bytes\): it is truncated; copy it again", _one_line(error))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"hello" * 100)
    with pytest.raises(CheckpointError, match=r"weights.bin: not a TensorFlow checkpoint"):
        open_checkpoint(tmp_path / "weights.bin")


def test_directory_without_a_checkpoint(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(tmp_path)
    assert _one_line(error).startswith(f"{tmp_path}: a directory with no checkpoint in it")


@pytest.mark.parametrize("dtype, shown", [(DT_VARIANT, "DT_VARIANT"), (99, "DataType 99")])
def test_unknown_dtype(bundle, dtype, shown):
    assert table_entries(_index(bundle))[1][1][:2] == b"\x08\x01"  # dtype field first: DT_FLOAT
    name = table_entries(_index(bundle))[1][0].decode()
    _set_entry(bundle, name, lambda value: b"\x08" + varint(dtype) + value[2:])
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(bundle)
    assert _one_line(error) == f"{_index(bundle)}: '{name}' has unsupported dtype {shown}"


def test_big_endian_header(bundle):
    _set_entry(bundle, "", lambda value: value + b"\x10\x01")  # endianness = BIG
    with pytest.raises(CheckpointError, match=r"big-endian checkpoint"):
        open_checkpoint(bundle)


def test_size_disagreeing_with_shape(bundle):
    # shrink the size field (5) of one entry: the index no longer describes its tensor
    name = table_entries(_index(bundle))[1][0].decode()
    _set_entry(bundle, name, lambda value: value + b"\x28\x01")
    with open_checkpoint(bundle) as ckpt:
        with pytest.raises(CheckpointError, match=rf"'{name}' is stored as 1 bytes but shape"):
            ckpt.read(name)


def test_corrupt_v1_file(small, tmp_path):
    path = tmp_path / "model_v1.ckpt"
    shutil.copy(small.v1, path)
    _flip(path, 100_000)
    with pytest.raises(CheckpointError, match=r"model_v1.ckpt: block at offset \d+ fails its CRC32C check"):
        with open_checkpoint(path) as ckpt:
            for name in ckpt:
                ckpt.read(name)


def test_read_after_close(small):
    with open_checkpoint(small.v1) as ckpt:
        pass
    with pytest.raises(CheckpointError, match=r"model_v1.ckpt: the checkpoint is closed"):
        ckpt.read(ckpt.names()[0])


def test_unknown_variable(small):
    with pytest.raises(CheckpointError, match=r"model.ckpt: no variable named 'nope'"):
        open_checkpoint(small.v2).read("nope")


# --- the same cases from the command line: exit 2, one line, no traceback, no output left


def _corrupt_crc(bundle):
    _flip(bundle.with_name("model.ckpt.data-00000-of-00001"), 100)


def _remove_data(bundle):
    _data(bundle).unlink()


def _truncate_index(bundle):
    _index(bundle).write_bytes(_index(bundle).read_bytes()[:100])


def _bad_dtype(bundle):
    name = table_entries(_index(bundle))[1][0].decode()
    _set_entry(bundle, name, lambda value: b"\x08\x63" + value[2:])


def _corrupt_index_block(bundle):
    _flip(_index(bundle), 3)


def _bad_magic(bundle):
    _flip(_index(bundle), -1)


CLI_CASES = {
    "tensor crc": (_corrupt_crc, "fails its CRC32C check"),
    "block crc": (_corrupt_index_block, "block at offset 0 fails its CRC32C check"),
    "bad magic": (_bad_magic, "bad magic number"),
    "missing shard": (_remove_data, "missing data shard"),
    "truncated index": (_truncate_index, "bad magic number"),
    "unknown dtype": (_bad_dtype, "unsupported dtype DataType 99"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_cli_errors(bundle, tmp_path, capsys, case, suffix):
    damage, expected = CLI_CASES[case]
    damage(bundle)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dump", str(bundle), "-o", str(out / f"w{suffix}")])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and expected in stderr
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "path, expected",
    [("nothere", "no such checkpoint"), ("dir", "a directory with no checkpoint"), ("notes.txt", "not a TensorFlow")],
)
def test_cli_not_a_checkpoint(tmp_path, capsys, path, expected):
    (tmp_path / "dir").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dump", str(tmp_path / path), "-o", str(tmp_path / "x.npz")])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and stderr.count("\n") == 1 and expected in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "notes.txt"]


# --- fuzz: mutated real files raise CheckpointError or read fine, never anything else


def _read_everything(path):
    try:
        with open_checkpoint(path) as ckpt:
            for name in ckpt:
                ckpt.info(name)
                np.asarray(ckpt.read(name)).sum() if ckpt.info(name).dtype != object else None
    except CheckpointError as error:
        assert "\n" not in str(error)


MUTATIONS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data, mutations, cut):
    data = bytearray(data)
    for where, byte in mutations:
        data[int(where * len(data))] = byte
    return bytes(data[: int(cut * len(data))] if cut is not None else data)


@FUZZ
@given(
    which=st.sampled_from(["snappy index", "snappy data", "fixture index", "v1"]),
    mutations=MUTATIONS,
    cut=st.none() | st.floats(0, 1),
)
def test_fuzz_raw_bytes(small, which, mutations, cut):
    snappy = small.root.parent / "real" / "half_plus_two_snappy"
    sources = {
        "snappy index": (snappy, "variables", "variables.index"),
        "snappy data": (snappy, "variables", "variables.data-00000-of-00001"),
        "fixture index": (small.root, "model.ckpt", "model.ckpt.index"),
        "v1": (small.root, "model_v1.ckpt", "model_v1.ckpt"),
    }
    root, prefix, target = sources[which]
    with tempfile.TemporaryDirectory() as directory:
        for path in root.glob(prefix + "*"):
            if path.name != target and path.is_file():
                shutil.copy(path, f"{directory}/{path.name}")
        with open(f"{directory}/{target}", "wb") as file:
            file.write(_mutate((root / target).read_bytes(), mutations, cut))
        _read_everything(f"{directory}/{prefix}")


@FUZZ
@given(
    which=st.sampled_from(["fixture index", "v1"]),
    entry=st.floats(0, 1, exclude_max=True),
    mutations=MUTATIONS,
    cut=st.none() | st.floats(0, 1),
)
def test_fuzz_entry_values_behind_valid_checksums(small, which, entry, mutations, cut):
    """Mutate one entry's protobuf value and rebuild the table, so the parsers (not the CRC) meet it."""
    name = "model.ckpt.index" if which == "fixture index" else "model_v1.ckpt"
    entries = ENTRY_CACHE.setdefault(name, table_entries(small.root / name))
    chosen = min(int(entry * 4), 3) if which == "v1" else int(entry * len(entries))  # V1: meta or a tensor
    entries = list(entries)
    key, value = entries[chosen]
    entries[chosen] = (key, _mutate(value, mutations, cut) if value else value)
    with tempfile.TemporaryDirectory() as directory:
        if which == "fixture index":
            shutil.copy(small.root / V2_FILES[1], f"{directory}/{V2_FILES[1]}")
        with open(f"{directory}/{name}", "wb") as file:
            file.write(build_table(entries))
        _read_everything(f"{directory}/{name.removesuffix('.index')}")


ENTRY_CACHE = {}


def test_overlapping_slices_with_the_right_element_count_are_refused():
    from converter.checkpoint import _slices

    whole = np.arange(8.0).reshape(4, 2)
    parts = [(((0, 2), (0, 2)), whole[0:2]), (((1, 2), (0, 2)), whole[1:3])]  # rows 0-1 and 1-2: row 3 missing
    with pytest.raises(_slices.ProtoError, match="overlap"):
        _slices.assemble((3, 2), whole.dtype, parts[:1] + [(((1, 2), (0, 2)), whole[1:2])])
    with pytest.raises(_slices.ProtoError, match="overlap"):
        _slices.assemble((4, 2), whole.dtype, parts)
    ok = _slices.assemble((4, 2), whole.dtype, [(((0, 2), (0, 2)), whole[0:2]), (((2, 2), (0, 2)), whole[2:4])])
    np.testing.assert_array_equal(ok, whole)
