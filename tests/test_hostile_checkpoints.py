"""Hostile checkpoints, built here byte by byte: a one-line error in bounded memory and time, or a
read in memory a small multiple of the bytes stored; never a traceback, never a half-written output."""

import os
import pathlib
import struct

import numpy as np
import pytest

import crafted
from converter.checkpoint import _crc, open_checkpoint
from converter.errors import ConvertError

GIB = 1 << 30
ROW = 1 << 20  # float32 elements in one row of the partitioned memory bomb: 4 MiB


# --- partitioned slices that claim more than the data files hold


def _slice_bomb(directory, *, same_extents=False, slices=1000):
    """A partitioned tensor of ``slices`` rows of 4 MiB, every row's entry pointing at the same 4 MiB
    of the data file (or, ``same_extents``, the full entry listing one slice ``slices`` times)."""
    row = np.ones(ROW, np.float32).tobytes()
    crc = _crc.mask(_crc.crc32c(row))
    extents = [((0 if same_extents else i, 1), (0, -1)) for i in range(slices)]
    parts = {e: crafted.entry_proto(crafted.DT_FLOAT, (1, ROW), 0, 0, len(row), crc) for e in set(extents)}
    entries = crafted.partitioned_entries("bomb/weights", (slices, ROW), extents, parts)
    return crafted.write_bundle(pathlib.Path(directory) / "model.ckpt", entries, row)


@pytest.mark.parametrize("same_extents, message", [
    (False, "slices of 'bomb/weights' claim the same bytes of the data file"),
    (True, "'bomb/weights' lists one of its slices twice"),
])
def test_slices_sharing_bytes_are_refused_before_anything_is_allocated(tmp_path, same_extents, message):
    bundle = _slice_bomb(tmp_path, same_extents=same_extents)
    assert (tmp_path / "model.ckpt.index").stat().st_size < 100_000
    out = tmp_path / "out"
    out.mkdir()
    results, peak = crafted.run_limited([["dump", str(bundle), "-o", str(out / "all.npz")],
                                         ["inspect", str(bundle)]], memory=GIB)
    for result in results:
        crafted.assert_error(result, message)
        assert result["seconds"] < 5
    assert peak < 300e6 and crafted.files(out) == []  # it once wrote 4.2 GB with a 5.2 GB peak


def test_slices_past_the_end_of_the_data_file_are_refused(tmp_path):
    # distinct rows, each in its own bytes, but the data file holds only the first
    row = np.ones(ROW, np.float32).tobytes()
    extents = [((i, 1), (0, -1)) for i in range(64)]
    parts = {e: crafted.entry_proto(crafted.DT_FLOAT, (1, ROW), 0, i * len(row), len(row)) for i, e in enumerate(extents)}
    bundle = crafted.write_bundle(tmp_path / "model.ckpt", crafted.partitioned_entries("w", (64, ROW), extents, parts), row)
    with pytest.raises(ConvertError, match=r"'w' and 62 more entries lie past the end of the data file \(4194304 bytes\)"):
        open_checkpoint(bundle)


# --- V1 values: element counts bounded by the bytes present; inspect never decodes values


def _unpacked_v1(path, count):
    ints = (crafted.tag(7, crafted.VARINT) + b"\x01") * count  # int_val, one tagged field per element
    strings = (crafted.tag(8, crafted.BYTES) + b"\x01x") * count  # string_val, never packed
    return crafted.write_v1(path, [("v/ints", crafted.DT_INT32, (count,), ints),
                                   ("v/strings", crafted.DT_STRING, (count,), strings)])


def test_unpacked_v1_values_read_in_bounded_memory_and_time(tmp_path):
    count = 5_000_000  # 10 MB of int_val, 15 MB of string_val: once 1.4 GB and 14 s
    v1 = _unpacked_v1(tmp_path / "unpacked.ckpt", count)
    results, peak = crafted.run_limited([["dump", str(v1), "-o", str(tmp_path / "ints.npz")], ["inspect", str(v1)]],
                                        memory=GIB)
    assert [r["code"] for r in results] == [0, 0] and all(r["unexpected"] is None for r in results)
    assert sum(r["seconds"] for r in results) < 10 and peak < 400e6
    with np.load(tmp_path / "ints.npz") as saved:
        assert list(saved) == ["v/ints"] and saved["v/ints"].dtype == np.int32 and int(saved["v/ints"].sum()) == count


def test_inspect_reads_no_tensor_values(tmp_path, monkeypatch):
    from converter.checkpoint import _repeated
    from converter.cli import inspect

    v1 = _unpacked_v1(tmp_path / "unpacked.ckpt", 1000)
    for decoder in ("strings", "packed", "varints"):
        monkeypatch.setattr(_repeated, decoder, lambda *a, **k: pytest.fail("inspect decoded tensor values"))
    report = inspect.build_report(v1)
    strings = next(v for v in report["variables"] if v["name"] == "v/strings")
    assert strings["dtype"] == "string" and strings["bytes"] > 3000  # the stored entry's size


@pytest.mark.parametrize("proto, message", [
    (crafted.field(7, b"\x01\x02\x03"), "claims 1000000000000 values in an entry of 5 bytes"),
    ((crafted.tag(7, crafted.VARINT) + b"\x01") * 10 + crafted.tag(7, crafted.FIXED32) + b"abcd", "wire type 5"),
])
def test_v1_counts_and_wire_types_that_do_not_fit(tmp_path, proto, message):
    shape = (10**12,) if "claims" in message else (11,)
    v1 = crafted.write_v1(tmp_path / "bad.ckpt", [("v/x", crafted.DT_INT32, shape, proto)])
    with open_checkpoint(v1) as ckpt, pytest.raises(ConvertError, match=message) as error:
        ckpt.read("v/x")
    assert "\n" not in str(error.value)


def test_unpacked_and_packed_runs_decode_as_tensorflow_writes_them(tmp_path):
    values = np.array([0, 1, -1, 300, 2**31 - 1, -(2**31)], np.int32)
    mixed = b"".join(crafted.tag(7, crafted.VARINT) + crafted.varint(int(v)) for v in values[:3])
    mixed += crafted.field(7, b"".join(crafted.varint(int(v)) for v in values[3:]))  # then one packed run
    floats = np.linspace(-1, 1, 7, dtype=np.float32)
    unpacked = b"".join(crafted.tag(5, crafted.FIXED32) + struct.pack("<f", v) for v in floats)
    v1 = crafted.write_v1(tmp_path / "ok.ckpt", [("v/i", crafted.DT_INT32, (6,), mixed),
                                                 ("v/f", crafted.DT_FLOAT, (7,), unpacked)])
    with open_checkpoint(v1) as ckpt:
        np.testing.assert_array_equal(ckpt.read("v/i"), values)
        np.testing.assert_array_equal(ckpt.read("v/f"), floats)


# --- names no output can hold


@pytest.mark.parametrize("name, message", [
    (b"InceptionV3/\xff\xfe/weights", "is not valid UTF-8"),
    (b"a" * 70_000, "is 70000 bytes long"),
    (b"a\x00b", "holds a NUL character"),
])
def test_names_no_output_can_hold_are_refused(tmp_path, name, message):
    entries, data = crafted.tensor_entries({name: np.ones(3, np.float32), b"ok": np.zeros(2, np.float32)})
    bundle = crafted.write_bundle(tmp_path / "model.ckpt", entries, data)
    out = tmp_path / "out"
    out.mkdir()
    results, _ = crafted.run_limited([["dump", str(bundle), "-o", str(out / "x.safetensors")],
                                      ["dump", str(bundle), "-o", str(out / "x.npz")], ["inspect", str(bundle), "--json"]])
    for result in results:
        crafted.assert_error(result, message)
    assert crafted.files(out) == []


# --- checkpoint state files that loop or lead out of their directory


def test_state_file_cycle_and_escape_are_one_line_errors(tmp_path):
    ckpt, _ = crafted.tiny(tmp_path)
    for suffix in (".index", ".data-00000-of-00001"):
        os.rename(f"{ckpt}{suffix}", tmp_path / f"a{suffix}")
    (tmp_path / "a").mkdir()  # the directory a/ beside a.index, naming ../a
    (tmp_path / "a" / "checkpoint").write_text('model_checkpoint_path: "../a"\n')
    (tmp_path / "train").mkdir()  # a state file naming a checkpoint in another directory
    (tmp_path / "train" / "checkpoint").write_text(f'model_checkpoint_path: "{tmp_path / "a"}"\n')
    results, _ = crafted.run_limited([["inspect", str(tmp_path / "a")],
                                      ["--mapping", str(tmp_path / "tiny.yaml"), str(tmp_path / "train")]])
    crafted.assert_error(results[0], f"names {tmp_path / 'a' / '..' / 'a'}, outside {tmp_path / 'a'}")
    crafted.assert_error(results[1], f"outside {tmp_path / 'train'}; pass that checkpoint's prefix instead")
    assert not (tmp_path / "a.pth").exists() and not list((tmp_path / "train").glob("*.pth"))
