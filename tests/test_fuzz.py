"""Structure-aware fuzzing of everything a user hands over, through the command line.

Index tables keep valid block checksums while their entries' fields take hostile values (sizes,
offsets, shapes, slices, dtypes, shard ids); V1 files hold TensorProtos of every encoding; mapping
tables have one value replaced by a value of another type or range; batch manifests mix unknown
fields, wrong types and colliding ids. Each case runs in one child process under a memory and a time
limit, and must exit 0 or print one error (a line, at most with an indented problem list): never a
traceback, never a memory error, never a half-written file. A fixed seed makes a failure reproduce;
``CKPT_CONVERT_FUZZ_SEED`` picks another.
"""

import copy
import os
import pathlib
import random

import numpy as np
import yaml

import crafted
from converter.checkpoint import _crc, _proto

SEED = int(os.environ.get("CKPT_CONVERT_FUZZ_SEED", "20"))
MEMORY = 1 << 30
PEAK = 400e6
SECONDS = 240
HOSTILE_INTS = [0, 1, 2, 3, 7, 255, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -1, -(2**31), 10**12]
HOSTILE_SHAPES = [(), (0,), (1,), (3, 3, 3, 4), (10**12,), (2**31, 2**31), (-1,), (1,) * 40, (4, 3)]
HOSTILE_VALUES = [None, True, False, 0, -1, -3000, 5000, 10**6, 10**30, 1.5, float("nan"), float("inf"), "", "x",
                  "global", "SAME", "relu", [], [1], [-5], [10**6, 10**6], [100000, 100000], ["out"], [[]], {},
                  {"a": 1}, {"layer": "Conv2d_1a_3x3"}, "\u00e9\u4e2d", "a" * 300]


def _assert_clean(results, directory):
    for result in results:
        assert result["unexpected"] is None, (result["argv"], result["unexpected"])
        if result["code"] != 0:
            crafted.assert_error(result)
    partial = [p for p in pathlib.Path(directory).rglob("*") if p.name.endswith(".partial")]
    assert partial == [], partial


# --- V2 index entries behind valid checksums


def _base_bundle():
    """The tiny network's tensors and a partitioned one: ``({key: entry fields}, data)``."""
    tensors = crafted.tiny_tensors()
    entries, data = crafted.tensor_entries(tensors)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    extents = [((0, 2), (0, -1)), ((2, 2), (0, -1))]
    parts = {}
    for extent, part in zip(extents, (rows[:2], rows[2:])):
        raw = part.tobytes()
        parts[extent] = crafted.entry_proto(crafted.DT_FLOAT, (2, 3), 0, len(data), len(raw), _crc.mask(_crc.crc32c(raw)))
        data += raw
    entries.update(crafted.partitioned_entries("Tiny/extra/weights", (4, 3), extents, parts))
    return {key: list(_proto.iter_fields(value)) for key, value in entries.items()}, data


def _encode(fields):
    out = b""
    for number, wire, value in fields:
        if wire == crafted.VARINT:
            out += crafted.field(number, value)
        elif wire == crafted.FIXED32:
            out += crafted.tag(number, crafted.FIXED32) + (value % 2**32).to_bytes(4, "little")
        else:
            out += crafted.field(number, bytes(value))
    return out


def _mutate_entry(rng, fields, others):
    """One structural change to a BundleEntryProto's fields."""
    fields = list(fields)
    kind = rng.randrange(6)
    if kind == 0 and fields:  # a number field takes a hostile value
        numbers = [i for i, (_, wire, _) in enumerate(fields) if wire == crafted.VARINT]
        if numbers:
            i = rng.choice(numbers)
            fields[i] = (fields[i][0], crafted.VARINT, rng.choice(HOSTILE_INTS))
    elif kind == 1:  # another shape
        fields = [f for f in fields if f[0] != 2] + [(2, crafted.BYTES, crafted.shape_proto(
            [d % 2**64 if d >= 0 else d for d in rng.choice(HOSTILE_SHAPES)]))]
    elif kind == 2:  # slices: duplicated, outside the shape, or of another rank
        extents = rng.choice([((0, 2), (0, -1)), ((0, 4), (0, -1)), ((3, 5), (0, -1)), ((0, -1),), ((-1, 2), (0, 3))])
        fields += [(7, crafted.BYTES, crafted.slice_proto(extents))] * rng.choice([1, 2, 1000])
    elif kind == 3:  # another entry's offset and size: two tensors in the same bytes
        donor = rng.choice(others)
        fields = [f for f in fields if f[0] not in (4, 5)] + [f for f in donor if f[0] in (4, 5)]
    elif kind == 4 and fields:  # a field dropped
        fields.pop(rng.randrange(len(fields)))
    else:  # the dtype of another kind of tensor
        fields = [f for f in fields if f[0] != 1] + [(1, crafted.VARINT, rng.choice([2, 3, 7, 9, 10, 14, 19, 21, 101, 99]))]
    return fields


def test_fuzz_index_entries_behind_valid_checksums(tmp_path):
    rng = random.Random(SEED)
    base, data = _base_bundle()
    table = tmp_path / "tiny.yaml"
    table.write_text(crafted.TINY_TABLE)
    cases = []
    for number in range(120):
        entries = {key: list(fields) for key, fields in base.items()}
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(list(entries))
            entries[key] = _mutate_entry(rng, entries[key], list(base.values()))
        directory = tmp_path / f"case{number}"
        directory.mkdir()
        prefix = crafted.write_bundle(directory / "model.ckpt", {k: _encode(f) for k, f in entries.items()},
                                      data[: rng.choice([len(data)] * 4 + [len(data) // 2])],
                                      num_shards=rng.choice([1, 1, 1, 2]))
        cases += [["dump", str(prefix), "-o", str(directory / "all.npz")], ["inspect", str(prefix), "--json"],
                  ["--mapping", str(table), str(prefix), "-o", str(directory / "model.pth")]]
    results, peak = crafted.run_limited(cases, memory=MEMORY, seconds=SECONDS)
    _assert_clean(results, tmp_path)
    assert peak < PEAK
    assert any(r["code"] == 0 for r in results) and any(r["code"] != 0 for r in results)  # both kinds met


# --- V1 TensorProtos of every encoding


def _tensor_proto(rng, count):
    """A TensorProto of int32 or float values: packed, unpacked, mixed, truncated or of the wrong wire type."""
    parts = []
    for _ in range(rng.randint(0, 4)):
        chosen = rng.randrange(6)
        n = rng.choice([0, 1, count, count + 1, 1000])
        if chosen == 0:
            parts.append(crafted.field(7, b"".join(crafted.varint(rng.choice(HOSTILE_INTS)) for _ in range(n))))
        elif chosen == 1:
            parts += [crafted.tag(7, crafted.VARINT) + crafted.varint(rng.choice(HOSTILE_INTS)) for _ in range(n)]
        elif chosen == 2:
            parts += [crafted.tag(7, crafted.FIXED32) + b"\x00\x00\x80\x3f" for _ in range(n)]
        elif chosen == 3:
            parts.append(crafted.field(4, bytes(rng.choice([0, 3, 4 * count, 4 * count + 1]))))  # tensor_content
        elif chosen == 4:
            parts.append(crafted.field(8, b"text"))  # a string value in an int tensor
        else:
            parts.append(crafted.tag(7, crafted.VARINT) + b"\xff" * rng.choice([1, 11]))  # truncated or too long
    proto = b"".join(parts)
    return proto[: rng.randrange(len(proto) + 1)] if proto and rng.random() < 0.2 else proto


def test_fuzz_v1_values(tmp_path):
    rng = random.Random(SEED)
    cases = []
    for number in range(150):
        shape = rng.choice([(0,), (1,), (3,), (7,), (10**9,), (2, 3)])
        count = int(np.prod(shape))
        dtype = rng.choice([crafted.DT_INT32, crafted.DT_INT32, crafted.DT_FLOAT, crafted.DT_INT64, 10, 19, 14, 8])
        path = crafted.write_v1(tmp_path / f"case{number}.ckpt", [("v/x", dtype, shape, _tensor_proto(rng, min(count, 8)))])
        cases += [["dump", str(path), "-o", str(tmp_path / f"case{number}.npz")], ["inspect", str(path)]]
    results, peak = crafted.run_limited(cases, memory=MEMORY, seconds=SECONDS)
    _assert_clean(results, tmp_path)
    assert peak < PEAK
    assert any(r["code"] == 0 for r in results[::2]) and any(r["code"] != 0 for r in results[::2])


# --- mapping tables with one value of another type or range


def _paths(value, path=()):
    """Every path to a value inside nested dicts and lists."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _mutate_table(rng, data):
    data = copy.deepcopy(data)
    path = rng.choice([p for p in _paths(data) if p])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    chosen = rng.random()
    if chosen < 0.7:
        parent[path[-1]] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    elif chosen < 0.85 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, list):
        parent.append(copy.deepcopy(parent[path[-1]]))  # a node or a value twice
    else:
        parent[f"{path[-1]}_extra"] = copy.deepcopy(parent[path[-1]])
    return data


def test_fuzz_mapping_tables(tmp_path):
    rng = random.Random(SEED)
    ckpt, table = crafted.tiny(tmp_path)
    data = yaml.safe_load(table.read_text())
    cases = []
    for number in range(150):
        path = tmp_path / f"t{number}.yaml"
        mutated = _mutate_table(rng, data)
        if rng.random() < 0.1:  # the text itself damaged: bytes that are not UTF-8 or not YAML
            raw = bytearray(yaml.safe_dump(mutated).encode())
            raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0xC3, ord("["), ord("*"), ord("&"), ord(":")])
            path.write_bytes(bytes(raw))
        else:
            path.write_text(yaml.safe_dump(mutated))
        target, suffix = rng.choice([("torch", ".pth"), ("torch", ".safetensors"), ("onnx", ".onnx"),
                                     ("keras", ".h5"), ("keras", ".weights.h5")])
        cases.append(["--to", target, "--mapping", str(path), str(ckpt), "-o", str(tmp_path / f"out{number}{suffix}")])
    results, peak = crafted.run_limited(cases, memory=MEMORY, seconds=SECONDS)
    _assert_clean(results, tmp_path)
    assert peak < PEAK
    for number, result in enumerate(results):
        written = list(tmp_path.glob(f"out{number}.*"))
        assert bool(written) == (result["code"] == 0), (result["argv"], result["stderr"])


# --- batch manifests


MANIFEST_FIELDS = ["path", "id", "architecture", "mapping", "scope", "ema", "background", "aux", "input_size", "lenient",
                   "targets", "bogus"]
MANIFEST_VALUES = HOSTILE_VALUES + ["tiny.ckpt", "tiny.ckpt.index", "nowhere.ckpt", ".", "..", "/", "report.json",
                                   "x/state.json", ".batch.lock", "torch;onnx", ["torch", "keras"], [["torch"]],
                                   "tiny.yaml", "true", "maybe"]


def test_fuzz_batch_manifests(tmp_path):
    rng = random.Random(SEED)
    crafted.tiny(tmp_path)
    cases = []
    for number in range(150):
        rows = []
        for _ in range(rng.randint(0, 4)):
            row = {"path": rng.choice(["tiny.ckpt", "tiny.ckpt.index", "nowhere.ckpt", "."])}
            for field in rng.sample(MANIFEST_FIELDS, rng.randint(0, 3)):
                row[field] = copy.deepcopy(rng.choice(MANIFEST_VALUES))
            rows.append(row)
        if rng.random() < 0.3:  # as CSV: every value text
            header = sorted({key for row in rows for key in row} | {"path"})
            lines = [",".join(header)] + [",".join(str(row.get(k, "")).replace(",", ";") for k in header) for row in rows]
            path = tmp_path / f"m{number}.csv"
            path.write_text("\n".join(lines) + "\n")
        else:
            path = tmp_path / f"m{number}.yaml"
            path.write_text(yaml.safe_dump(rng.choice([rows, {"models": rows}, rows[:1] and rows[0], "text"])))
        cases.append({"discover": [str(path)]})
    results, peak = crafted.run_limited(cases, memory=MEMORY, seconds=SECONDS)
    _assert_clean(results, tmp_path)
    assert peak < PEAK
    assert any(r["code"] == 0 for r in results) and any(r["code"] != 0 for r in results)
