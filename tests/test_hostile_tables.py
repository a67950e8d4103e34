"""Hostile mapping tables and manifests (YAML bombs, values of the wrong type or range, text that is
not UTF-8): one error naming the file, in bounded time, and nothing written."""

import time

import numpy as np
import pytest
import yaml

import crafted
from converter import batch, mapping, table_schema
from converter._yaml import MAX_DEPTH
from converter.errors import MappingError


# --- YAML aliases, in tables and manifests


def _laughs(levels=12, width=10):
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


def test_alias_bombs_and_self_containing_nodes_are_refused(tmp_path):
    ckpt, table = crafted.tiny(tmp_path)
    text = table.read_text()
    graph = tmp_path / "graph.yaml"  # 10^12 nodes inside graph
    graph.write_text(_laughs() + "\n" + text.replace("graph:\n", "graph:\n  - {nodes: *l11}\n"))
    detect = tmp_path / "detect.yaml"
    detect.write_text(_laughs() + "\n" + text.replace("detect: [Conv2d_1a_3x3/weights]", "detect: *l11"))
    loop = tmp_path / "loop.yaml"  # a graph node that contains itself
    loop.write_text(text.replace("  - {avg_pool: global}", "  - &me {nodes: [*me]}"))
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(_laughs() + f"\nmodels: [{{path: {ckpt.name}, targets: *l11}}]\n")
    mapped = tmp_path / "mapped.yaml"  # a manifest row whose mapping table is a bomb
    mapped.write_text(f"- {{path: {ckpt.name}, mapping: graph.yaml, id: m}}\n")
    cases = [["--mapping", str(graph), str(ckpt), "-o", str(tmp_path / "a.pth")],
             ["--mapping", str(detect), str(ckpt), "-o", str(tmp_path / "b.pth")],
             ["--mapping", str(loop), str(ckpt), "-o", str(tmp_path / "c.pth")],
             {"discover": [str(manifest)]}]
    results, peak = crafted.run_limited(cases, seconds=60)
    for result, message in zip(results, ["once aliases are expanded"] * 2 + ["inside the node it names"] * 1
                               + ["once aliases are expanded"]):
        crafted.assert_error(result, message)
        assert result["seconds"] < 5
    assert peak < 300e6 and not list(tmp_path.glob("*.pth"))
    report = batch.run_batch([mapped], tmp_path / "out", jobs=1)
    (record,) = report.models
    assert record.status == "failed" and "graph.yaml: line" in record.reason and "expanded" in record.reason


def test_aliases_that_expand_to_a_table_of_ordinary_size_load(tmp_path):
    # PyYAML writes an alias wherever a value is shared: such tables load, as a table written out does
    ckpt, table = crafted.tiny(tmp_path)
    data = yaml.safe_load(table.read_text())
    shared = ["out"]
    for column in ("torch", "onnx"):
        data["kinds"]["conv_bn"][column]["bn.weight" if column == "torch" else "BatchNorm/gamma"]["shape"] = shared
    text = yaml.safe_dump(data)
    assert "&id001" in text and "*id001" in text
    (tmp_path / "shared.yaml").write_text(text)
    assert mapping.load_table(tmp_path / "shared.yaml").kinds == mapping.load_table(table).kinds


def test_deep_and_huge_yaml_are_refused(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("graph: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    with pytest.raises(MappingError, match=f"nested more than {MAX_DEPTH} levels deep"):
        mapping.load_table(deep)
    keys = tmp_path / "keys.yaml"
    keys.write_text("{1: a}\n")
    with pytest.raises(MappingError, match="the key 1 is not a string; quote it"):
        mapping.load_table(keys)


# --- table values of the wrong type or out of range; target keys given twice; integer weights


def _edit(table, change):
    data = yaml.safe_load(table.read_text())
    change(data)
    return data


def _set(path, value):
    def change(data):
        *parents, last = path
        for key in parents:
            data = data[key]
        data[last] = value
    return change


def _every_column(change):
    # the same change in the torch, keras and onnx columns, so that every target meets it
    def apply(data):
        for path in (("torch", "bn.weight"), ("keras", "batch_normalization/gamma"), ("onnx", "BatchNorm/gamma")):
            data["kinds"]["conv_bn"][path[0]].setdefault(path[1], {"fill": 1.0, "shape": ["out"]})
            change(data["kinds"]["conv_bn"][path[0]][path[1]])
        for path in (("torch", "bias"), ("keras", "dense/bias"), ("onnx", "biases")):
            change(data["kinds"]["logits"][path[0]][path[1]])
    return apply


def _on(key, value, only=None):
    def change(spec):
        if only is None or only in spec:
            spec[key] = value
    return _every_column(change)


def _rename_all(data):
    # every row one name: torch keys collide where the kinds' keys do, as two conv layers' would
    for row in data["layers"].values():
        row.update(torch="same", onnx="same", keras={"conv2d": "same", "batch_normalization": "bn", "dense": "same"})
    torch = data["kinds"]["logits"]["torch"]
    torch["conv.weight"], torch["bn.bias"] = torch.pop("weight"), torch.pop("bias")
    data["targets"]["keras"]["order"] = ["same", "bn"]


def _duplicate_names(data):
    data["graph"][1]["name"] = "Conv"


HOSTILE_TABLES = {
    "background 5000": (_set(("facts", "background_class"), 5000), "facts.background_class must be null or"),
    "background -3000": (_set(("facts", "background_class"), -3000), "facts.background_class must be null or"),
    "classes axis 99": (_on("classes", 99, only="classes"), "classes axis 99 of a tensor of rank 1"),
    "classes axis x": (_on("classes", "x", only="classes"), "classes must be an axis"),
    "detect empty": (_set(("detect",), []), "detect must list one or more variable names"),
    "fill text": (_on("fill", "abc", only="fill"), "fill must be a finite number"),
    "fill shape -5": (_on("shape", [-5], only="fill"), "a fill's shape must list"),
    "fill 37 GiB": (_on("shape", [100000, 100000], only="fill"), "is larger than any tensor"),
    "targets.torch list": (_set(("targets", "torch"), ["conv"]), "targets.torch must be a mapping"),
    "max_pool -3": (lambda d: d["graph"].insert(1, {"max_pool": -3}), "max_pool -3 must be [height, width]"),
    "max_pool 10^6": (lambda d: d["graph"].insert(1, {"max_pool": [10**6, 10**6]}), "must be [height, width]"),
    "stride 0": (_set(("graph", 0, "stride"), 0), "stride 0 must be an integer from 1"),
    "stride x": (_set(("graph", 0, "stride"), "x"), "stride 'x' must be an integer"),
    "duplicate node names": (_duplicate_names, "2 nodes are named Conv"),
    "epsilon text": (_set(("facts", "batch_norm_epsilon"), "small"), "batch_norm_epsilon must be a positive"),
    "one name for every layer": (_rename_all, "is given 2 times"),
    # values no rule read as their type before parsing: each a problem of its own, not a crash
    "kind a list": (_set(("layers", "Conv2d_1a_3x3", "kind"), ["conv_bn"]), "`kind` must name one of kinds"),
    "kind null": (_set(("kinds", "conv_bn"), None), "kinds.conv_bn: must be a mapping (compute, params"),
    "reference 7": (_set(("facts", "reference"), 7), "facts.reference must give module"),
    "torchvision dims x": (_set(("targets", "torch", "torchvision"), {"model": "m", "dims": "x"}),
                           "targets.torch.torchvision.dims must map layers"),
}


def test_hostile_table_values_are_one_line_errors_for_every_target(tmp_path):
    ckpt, table = crafted.tiny(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cases, expected = [], []
    for number, (name, (change, message)) in enumerate(HOSTILE_TABLES.items()):
        path = tmp_path / f"t{number}.yaml"
        path.write_text(yaml.safe_dump(_edit(table, change)))
        for target, suffix in (("torch", ".pth"), ("onnx", ".onnx"), ("keras", ".h5")):
            cases.append(["--to", target, "--mapping", str(path), str(ckpt), "-o", str(out / f"{number}{suffix}")])
            expected.append((name, message))
    results, _ = crafted.run_limited(cases, seconds=120)
    for (name, message), result in zip(expected, results):
        try:
            crafted.assert_error(result, message)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    assert crafted.files(out) == []


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_weights_are_refused_for_every_target(tmp_path, dtype):
    ckpt, table = crafted.tiny(tmp_path, weights_dtype=dtype)  # once written as int32, even with --dtype float16
    cases = [["--to", target, "--mapping", str(table), str(ckpt), "-o", str(tmp_path / f"x{suffix}"), *extra]
             for target, suffix, extra in (("torch", ".pth", ["--dtype", "float16"]), ("onnx", ".onnx", []),
                                           ("keras", ".weights.h5", []))]
    for result in crafted.run_limited(cases)[0]:
        crafted.assert_error(result, f"Tiny/Conv2d_1a_3x3/weights: its dtype is {np.dtype(dtype)}")
    assert not list(tmp_path.glob("x.*"))


def test_a_large_table_validates_in_linear_time_with_a_capped_error(tmp_path):
    layers = 30_000  # each in the graph, each without the keras name its kind needs: one problem each
    data = table_schema.expand(yaml.safe_load(crafted.TINY_TABLE), "tiny.yaml")  # the form validate() reads
    data["layers"].update({f"L{i}": {"kind": "conv_bn_relu", "torch": f"m{i}", "onnx": f"L{i}"} for i in range(layers)})
    data["graph"][1:1] = [{"layer": f"L{i}"} for i in range(layers)]
    started = time.perf_counter()
    assert len(mapping.validate(data)) == layers
    assert time.perf_counter() - started < 2  # counting each layer's uses in a list took 9.5 s here
    for i in range(100, layers):  # a table small enough to write quickly, still 100 problems
        del data["layers"][f"L{i}"]
    del data["graph"][101 : 1 + layers]
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(MappingError) as error:
        mapping.load_table(path)
    lines = str(error.value).splitlines()
    assert "(100 problems)" in lines[0] and lines[-1] == "  and 80 more" and len(lines) == 22


# --- text that is not UTF-8


def test_tables_manifests_and_csv_that_are_not_utf8(tmp_path):
    ckpt, table = crafted.tiny(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(table.read_bytes().replace(b"scope: Tiny", b"scope: Tiny # r\xe9seau"))
    (tmp_path / "fleet.yaml").write_bytes(b"- tiny.ckpt # r\xe9seau\n")
    (tmp_path / "fleet.csv").write_bytes(b"path,id\ntiny.ckpt,r\xe9seau\n")
    (tmp_path / "long.csv").write_bytes(b"path\n" + b"x" * 200_000 + b"\n")  # over csv's field limit
    cases = [["--mapping", str(latin), str(ckpt)], {"discover": [str(tmp_path / "fleet.yaml")]},
             {"discover": [str(tmp_path / "fleet.csv")]}, {"discover": [str(tmp_path / "long.csv")]}]
    results, _ = crafted.run_limited(cases)
    for result in results[:3]:
        crafted.assert_error(result, "not UTF-8 text (byte")
    crafted.assert_error(results[3], "not a readable CSV manifest")
