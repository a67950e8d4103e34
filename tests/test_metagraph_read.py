"""The TensorFlow-free MetaGraphDef reader, checked against TensorFlow's own protobuf parser.

Real training graphs (queues aside: optimizers, savers, summaries, EMA, tf.cond as Switch/Merge,
reference and resource variables) are read node by node and attribute by attribute and compared
with what TensorFlow's generated bindings read; hand-built graphs cover every attribute and
constant encoding; damaged files give one error naming the file, also under fuzzing.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from converter.errors import GraphError
from converter.metagraph import read_meta_graph
from converter.metagraph.reader import Ref, Shape, Tensor, parse_ref

tf = pytest.importorskip("tensorflow", reason="TensorFlow's own parser is the reference")
from tensorflow.core.framework import attr_value_pb2, tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402


def _tf_meta(path):
    proto = meta_graph_pb2.MetaGraphDef()
    proto.ParseFromString(path.read_bytes())
    return proto


def _expected(attr):
    # TensorFlow's AttrValue as the reader's Python value
    kind = attr.WhichOneof("value")
    if kind == "list":
        for field in ("s", "i", "f", "b", "type", "shape", "tensor", "func"):
            items = list(getattr(attr.list, field))
            if items:
                return [_expected(_wrap(field, item)) for item in items]
        return []
    if kind in ("s", "placeholder"):
        value = getattr(attr, kind)
        try:
            return value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            return value
    if kind == "type":
        return tf.dtypes.as_dtype(attr.type).name.replace("_ref", "") + ("_ref" if attr.type > 100 else "")
    if kind == "shape":
        return Shape(None if attr.shape.unknown_rank else tuple(None if d.size == -1 else d.size for d in attr.shape.dim))
    if kind == "tensor":
        return tf.make_ndarray(attr.tensor)
    if kind == "func":
        return attr.func.name
    return getattr(attr, kind)


def _wrap(field, item):
    value = attr_value_pb2.AttrValue()
    if field in ("shape", "tensor", "func"):
        getattr(value, field).CopyFrom(item)
    else:
        setattr(value, field, item)
    return value


def _assert_attr_equal(ours, theirs, where):
    if isinstance(ours, Tensor):
        np.testing.assert_array_equal(ours.value, theirs, err_msg=where)
        assert ours.shape == theirs.shape and np.dtype(ours.value.dtype) == theirs.dtype, where
    elif isinstance(ours, float):
        assert ours == pytest.approx(theirs, rel=1e-7), where
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), where
        for a, b in zip(ours, theirs):
            _assert_attr_equal(a, b, where)
    else:
        assert ours == theirs, where


@pytest.mark.parametrize("name", ["residual", "flatten_fc"])
def test_training_graphs_read_as_tensorflow_reads_them(meta_net, name):
    fixture = meta_net(name)
    graph, proto = read_meta_graph(fixture.graph), _tf_meta(fixture.graph)
    assert list(graph.nodes) == [node.name for node in proto.graph_def.node]
    for node in proto.graph_def.node:
        ours = graph.nodes[node.name]
        assert (ours.op, ours.inputs, ours.device) == (node.op, tuple(node.input), node.device)
        assert set(ours.attr_names) == set(node.attr)
        for key, attr in node.attr.items():
            _assert_attr_equal(ours.attr(key), _expected(attr), f"{node.name}.{key}")
    assert set(graph.collections) == set(proto.collection_def)
    for key, collection in proto.collection_def.items():
        kind = collection.WhichOneof("kind")
        values = [v.decode() if kind == "node_list" and isinstance(v, bytes) else v
                  for v in getattr(collection, kind).value]
        assert (graph.collections[key].kind, list(graph.collections[key].values)) == (kind, values), key
    saver = proto.saver_def
    assert (graph.saver.filename_tensor_name, graph.saver.restore_op_name, graph.saver.max_to_keep,
            graph.saver.version) == (saver.filename_tensor_name, saver.restore_op_name, saver.max_to_keep, "V2")
    assert graph.tensorflow_version == proto.meta_info_def.tensorflow_version
    assert set(graph.stripped_ops) == {op.name for op in proto.meta_info_def.stripped_op_list.op}


def test_a_training_graph_holds_what_training_left_in_it(meta_net):
    graph = read_meta_graph(meta_net("flatten_fc").graph)
    counts = graph.op_counts()
    # resource variables, tf.cond on is_training, Momentum, the saver, summaries
    for op in ("VarHandleOp", "ReadVariableOp", "Switch", "Merge", "ResourceApplyMomentum", "SaveV2",
               "ScalarSummary", "FusedBatchNormV3", "PlaceholderWithDefault"):
        assert counts.get(op), op
    switch = next(node for node in graph.nodes.values() if node.op == "Switch" and "BatchNorm/cond" in node.name)
    assert len(switch.data_inputs) == 2
    merge = next(node for node in graph.nodes.values() if node.op == "Merge")
    assert all(isinstance(ref, Ref) for ref in merge.data_inputs)
    assert {"trainable_variables", "update_ops", "summaries", "train_op"} <= set(graph.collections)
    ref_graph = read_meta_graph(meta_net("residual").graph)
    assert ref_graph.op_counts().get("VariableV2") and ref_graph.nodes["Net/Conv2d_1a_3x3/weights"].attr("dtype") == "float32"


def _graph_with(**attrs):
    proto = meta_graph_pb2.MetaGraphDef()
    proto.meta_info_def.tensorflow_version = "1.15.0"
    node = proto.graph_def.node.add(name="n", op="Const", device="/device:CPU:0")
    node.input.extend(["a:1", "b", "^c"])
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    proto.graph_def.node.add(name="a", op="Placeholder")
    proto.collection_def["ints"].int64_list.value.extend([3, -4])
    proto.collection_def["floats"].float_list.value.extend([0.5])
    proto.saver_def.version = 1
    proto.saver_def.sharded = True
    return proto


def _tensor(dtype, shape, **fields):
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    tensor.tensor_shape.dim.extend([tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape])
    for key, value in fields.items():
        if key == "tensor_content":
            tensor.tensor_content = value
        else:
            getattr(tensor, key).extend(value)
    return attr_value_pb2.AttrValue(tensor=tensor)


CONSTANTS = {
    "content": (_tensor(types_pb2.DT_FLOAT, [2, 2], tensor_content=np.arange(4, dtype="<f4").tobytes()),
                np.arange(4, dtype=np.float32).reshape(2, 2)),
    "floats": (_tensor(types_pb2.DT_FLOAT, [3], float_val=[1.5, -2.0, 3.25]), np.array([1.5, -2, 3.25], np.float32)),
    "filled": (_tensor(types_pb2.DT_FLOAT, [2, 3], float_val=[7.0]), np.full((2, 3), 7, np.float32)),
    "last_repeats": (_tensor(types_pb2.DT_INT32, [4], int_val=[1, -2]), np.array([1, -2, -2, -2], np.int32)),
    "int64": (_tensor(types_pb2.DT_INT64, [2], int64_val=[-(2 ** 40), 5]), np.array([-(2 ** 40), 5], np.int64)),
    "bool": (_tensor(types_pb2.DT_BOOL, [], bool_val=[True]), np.array(True)),
    "half": (_tensor(types_pb2.DT_HALF, [2], half_val=np.array([0.5, -1], np.float16).view(np.uint16).tolist()),
             np.array([0.5, -1], np.float16)),
    "double": (_tensor(types_pb2.DT_DOUBLE, [1], double_val=[0.1]), np.array([0.1])),
    "empty": (_tensor(types_pb2.DT_FLOAT, [0]), np.zeros(0, np.float32)),
    "zeros": (_tensor(types_pb2.DT_FLOAT, [2]), np.zeros(2, np.float32)),
    "strings": (_tensor(types_pb2.DT_STRING, [2], string_val=[b"a", b"bc"]), np.array([b"a", b"bc"], object)),
}


def test_every_attribute_and_constant_encoding(tmp_path):
    lists = attr_value_pb2.AttrValue()
    lists.list.i.extend([1, 2, 2, 1])
    shapes = attr_value_pb2.AttrValue()
    shapes.list.shape.add().dim.add(size=-1)
    shapes.list.shape.add().unknown_rank = True
    attrs = {
        "padding": attr_value_pb2.AttrValue(s=b"SAME"),
        "epsilon": attr_value_pb2.AttrValue(f=0.001),
        "is_training": attr_value_pb2.AttrValue(b=True),
        "T": attr_value_pb2.AttrValue(type=types_pb2.DT_FLOAT),
        "ref": attr_value_pb2.AttrValue(type=types_pb2.DT_FLOAT_REF),
        "axis": attr_value_pb2.AttrValue(i=-1),
        "strides": lists,
        "_output_shapes": shapes,
        "types": attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(type=[1, 3])),
        "floats": attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(f=[0.5, 2.0])),
        "names": attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(s=[b"loc:@a", b"\xff"])),
        "none": attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue()),
        **{f"const_{key}": value for key, (value, _) in CONSTANTS.items()},
    }
    path = tmp_path / "model.ckpt.meta"
    path.write_bytes(_graph_with(**attrs).SerializeToString())
    graph = read_meta_graph(path)
    node = graph.nodes["n"]
    assert node.data_inputs == (Ref("a", 1), Ref("b", 0)) and node.control_inputs == ("c",)
    assert node.device == "/device:CPU:0" and graph.tensorflow_version == "1.15.0"
    assert (node.attr("padding"), node.attr("is_training"), node.attr("T"), node.attr("ref"), node.attr("axis")) == \
        ("SAME", True, "float32", "float32_ref", -1)
    assert node.attr("epsilon") == pytest.approx(0.001) and node.attr("strides") == [1, 2, 2, 1]
    assert node.attr("_output_shapes") == [Shape((None,)), Shape(None)]
    assert node.attr("types") == ["float32", "int32"] and node.attr("floats") == [0.5, 2.0]
    assert node.attr("names") == ["loc:@a", b"\xff"] and node.attr("none") == [] and node.attr("missing", 7) == 7
    for key, (_, expected) in CONSTANTS.items():
        value = node.attr(f"const_{key}").value
        assert value.dtype == expected.dtype and value.shape == expected.shape, key
        np.testing.assert_array_equal(value, expected, err_msg=key)
    assert graph.collections["ints"].values == (3, -4) and graph.collections["floats"].values == (0.5,)
    assert (graph.saver.version, graph.saver.sharded) == ("V1", True)
    assert parse_ref("x/y:2") == Ref("x/y", 2) and str(Ref("x", 0)) == "x"


def _one_line_error(path):
    with pytest.raises(GraphError) as caught:
        graph = read_meta_graph(path)
        for node in graph.nodes.values():
            node.attrs()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_damaged_or_other_files_are_one_line_errors(tmp_path, meta_net):
    good = meta_net("residual").graph.read_bytes()
    cases = {
        "empty.meta": b"",
        "text.meta": b"this is not a protobuf at all\n",
        "truncated.meta": good[: len(good) // 2],
        "graphdef.pb": _tf_meta(meta_net("residual").graph).graph_def.SerializeToString(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        _one_line_error(tmp_path / name)
    assert "no graph_def" in _one_line_error(tmp_path / "graphdef.pb")
    assert "cannot read" in _one_line_error(tmp_path / "missing.meta")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_graphs_raise_only_graph_errors(tmp_path, data):
    attrs = {key: value for key, (value, _) in CONSTANTS.items()}
    attrs["shape"] = attr_value_pb2.AttrValue(shape=tensor_shape_pb2.TensorShapeProto())
    good = bytearray(_graph_with(**attrs).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(good) - 1))
        good[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(good)))
    path = tmp_path / "fuzzed.meta"
    path.write_bytes(bytes(good[:cut]))
    try:
        graph = read_meta_graph(path)
        for node in graph.nodes.values():
            node.attrs()
    except GraphError as error:
        assert "\n" not in str(error) and str(path) in str(error)
