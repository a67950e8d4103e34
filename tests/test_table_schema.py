"""Mapping table schema 2 and the table hash ports record; no backend (torch, TensorFlow, Keras) is imported."""

import copy

import pytest
import yaml

from converter import mapping, table_schema


@pytest.fixture()
def expanded():
    return yaml.safe_load(mapping.load_table("inception_v3").path.read_text())


def _load(tmp_path, data, name="table.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return mapping.load_table(path)


def test_a_table_that_means_the_same_hashes_the_same(tmp_path, expanded):
    builtin = table_schema.digest(mapping.load_table("inception_v3"))
    # another file: keys reordered, a kind renamed, comments and description gone
    same = copy.deepcopy(expanded)
    same["kinds"] = {"conv_bn_relu" if name == "conv_bn" else name: kind for name, kind in reversed(same["kinds"].items())}
    for row in same["layers"].values():
        row["kind"] = "conv_bn_relu" if row["kind"] == "conv_bn" else row["kind"]
    same["description"] = "another sentence"
    same = dict(reversed(same.items()))
    assert table_schema.digest(_load(tmp_path, same)) == builtin
    changed = copy.deepcopy(expanded)
    changed["layers"]["Conv2d_1a_3x3"]["torch"] = "stem"
    assert table_schema.digest(_load(tmp_path, changed, "changed.yaml")) != builtin
    changed = copy.deepcopy(expanded)
    changed["kinds"]["conv_bn"]["compute"]["activation"] = "relu6"
    assert table_schema.digest(_load(tmp_path, changed, "changed.yaml")) != builtin
