"""The scope-name parser splits every TF-Slim name into parts that join back to the name, and rejects the rest."""

import importlib

import pytest

from converter import names
from converter.errors import ConvertError, VariableNameError

EMA = "ExponentialMovingAverage"


def rejoin(parsed):
    """The name put back together from its parts, in order; equal to ``parsed.name`` when nothing is lost."""
    parts = (parsed.prefix, parsed.model_scope, parsed.block, parsed.branch, parsed.layer, parsed.parameter)
    return "/".join([part for part in parts if part is not None] + list(parsed.suffixes))


def expected_role(name):
    """The role read off the name's last components, without the parser."""
    components = name.split("/")
    if any(c in ("RMSProp", "RMSProp_1", "Momentum", "Adam", "Adam_1") for c in components[-2:]):
        return "slot"
    if components[-1] == EMA:
        return "ema"
    return "global_step" if name == "global_step" else "model"


def tensorflow_and_slim(reason):
    """TensorFlow and tf-slim, imported the way the reference imports them (torch first); skip without them."""
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf_slim") is None:
        pytest.skip(reason)
    from converter.reference import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="module")
def tf():
    return tensorflow_and_slim("fixture variable names are listed by TensorFlow's own reader (needs the tf extra)")[0]


@pytest.fixture(scope="module", params=["v2", "v1", "train"])
def fixture_variables(request, small, tf):
    """``[(name, shape)]`` of one committed fixture checkpoint, as TensorFlow lists them."""
    return [(name, tuple(shape)) for name, shape in tf.train.list_variables(str(getattr(small, request.param)))]


def test_every_fixture_name_parses_and_joins_back(fixture_variables):
    assert len(fixture_variables) > 300
    for name, _ in fixture_variables:
        parsed = names.parse(name)
        assert rejoin(parsed) == name
        assert parsed.role == expected_role(name), name
        if parsed.kind == "model":
            assert parsed.model_scope == "InceptionV3" and parsed.prefix is None
            assert parsed.layer_path + "/" + parsed.parameter == parsed.local_name.removeprefix("InceptionV3/")
        # the same name, with the model scope given, parses the same way
        assert names.parse(name, model_scopes=["InceptionV3"]) == parsed


def test_fixture_layer_paths_match_an_independent_split(fixture_variables):
    for name, _ in fixture_variables:
        if name == "global_step":
            continue
        components = [c for c in name.split("/") if c not in (EMA, "RMSProp", "RMSProp_1")]
        layer = components[1:-2] if components[-2] == "BatchNorm" else components[1:-1]
        parsed = names.parse(name)
        assert parsed.layer_path == "/".join(layer), name
        assert parsed.layer == layer[-1]
        assert parsed.branch == next((c for c in layer if c.startswith("Branch_")), None)
        block = layer[: layer.index(parsed.branch)] if parsed.branch else layer[:-1]
        assert parsed.block == ("/".join(block) or None)


def test_fixture_roles_are_counted_exactly(small, tf):
    model = {name for name, _ in tf.train.list_variables(str(small.v2))}
    train = [names.parse(name) for name, _ in tf.train.list_variables(str(small.train))]
    by_role = {}
    for parsed in train:
        by_role.setdefault(parsed.role, []).append(parsed)
    assert {p.name for p in by_role["model"]} == model
    assert {p.base_name for p in by_role["ema"]} == model
    trainable = {n for n in model if not n.endswith(("moving_mean", "moving_variance"))}
    slots = sorted((p.base_name, p.slot) for p in by_role["slot"])
    assert slots == sorted((name, slot) for name in trainable for slot in ("RMSProp", "RMSProp_1"))
    assert {p.optimizer for p in by_role["slot"]} == {"RMSProp"}
    assert [p.name for p in by_role["global_step"]] == ["global_step"]
    assert sum(p.is_model_variable for p in train) == len(model)


def test_kernel_hints_are_only_hints(small, tf):
    """Shapes decide: the only InceptionV3 kernels whose name lies are Mixed_6a's two Conv2d_1a_1x1 (3x3)."""
    liars = {}
    for name, shape in tf.train.list_variables(str(small.v2)):
        parsed = names.parse(name)
        if parsed.parameter == "weights":
            assert parsed.kernel_hint is not None, name
            if tuple(shape[:2]) != parsed.kernel_hint:
                liars[parsed.layer_path] = tuple(shape[:2])
    assert liars == {"Mixed_6a/Branch_0/Conv2d_1a_1x1": (3, 3), "Mixed_6a/Branch_1/Conv2d_1a_1x1": (3, 3)}


@pytest.mark.parametrize(
    "name, block, branch, layer, op, index, kernel, parameter",
    [
        ("InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1/weights", "Mixed_6c", "Branch_2", "Conv2d_0d_7x1", "Conv2d", "0d", (7, 1), "weights"),
        ("InceptionV3/Mixed_5c/Branch_1/Conv2d_0b_1x1/BatchNorm/beta", "Mixed_5c", "Branch_1", "Conv2d_0b_1x1", "Conv2d", "0b", (1, 1), "BatchNorm/beta"),
        ("InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights", "Mixed_5c", "Branch_1", "Conv_1_0c_5x5", "Conv_1", "0c", (5, 5), "weights"),
        ("InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights", "Mixed_6a", "Branch_0", "Conv2d_1a_1x1", "Conv2d", "1a", (1, 1), "weights"),
        ("InceptionV3/Mixed_7b/Branch_1/Conv2d_0b_3x1/BatchNorm/moving_mean", "Mixed_7b", "Branch_1", "Conv2d_0b_3x1", "Conv2d", "0b", (3, 1), "BatchNorm/moving_mean"),
        ("InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1/BatchNorm/moving_variance", "Mixed_7c", "Branch_1", "Conv2d_0c_3x1", "Conv2d", "0c", (3, 1), "BatchNorm/moving_variance"),
        ("InceptionV3/AuxLogits/Conv2d_2a_5x5/weights", "AuxLogits", None, "Conv2d_2a_5x5", "Conv2d", "2a", (5, 5), "weights"),
        ("InceptionV3/AuxLogits/Conv2d_2b_1x1/biases", "AuxLogits", None, "Conv2d_2b_1x1", "Conv2d", "2b", (1, 1), "biases"),
        ("InceptionV3/Logits/Conv2d_1c_1x1/weights", "Logits", None, "Conv2d_1c_1x1", "Conv2d", "1c", (1, 1), "weights"),
        ("InceptionV3/Conv2d_1a_3x3/BatchNorm/beta", None, None, "Conv2d_1a_3x3", "Conv2d", "1a", (3, 3), "BatchNorm/beta"),
        ("InceptionV1/Mixed_3b/Branch_1/Conv2d_0b_3x3/weights", "Mixed_3b", "Branch_1", "Conv2d_0b_3x3", "Conv2d", "0b", (3, 3), "weights"),
        ("InceptionV1/Logits/Conv2d_0c_1x1/biases", "Logits", None, "Conv2d_0c_1x1", "Conv2d", "0c", (1, 1), "biases"),
        ("InceptionV2/Conv2d_1a_7x7/depthwise_weights", None, None, "Conv2d_1a_7x7", "Conv2d", "1a", (7, 7), "depthwise_weights"),
        ("InceptionV1/MaxPool_3a_3x3/weights", None, None, "MaxPool_3a_3x3", "MaxPool", "3a", (3, 3), "weights"),
        ("InceptionResnetV2/Repeat/block35_1/Branch_0/Conv2d_1x1/weights", "Repeat/block35_1", "Branch_0", "Conv2d_1x1", "Conv2d", None, (1, 1), "weights"),
        ("resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/gamma", "block1/unit_1/bottleneck_v1", None, "conv1", "conv1", None, None, "BatchNorm/gamma"),
        ("resnet_v1_50/block4/unit_3/bottleneck_v1/shortcut/weights", "block4/unit_3/bottleneck_v1", None, "shortcut", "shortcut", None, None, "weights"),
        ("resnet_v2_50/postnorm/moving_variance", None, None, "postnorm", "postnorm", None, None, "moving_variance"),
        ("resnet_v2_50/block2/unit_1/bottleneck_v2/preact/beta", "block2/unit_1/bottleneck_v2", None, "preact", "preact", None, None, "beta"),
        ("vgg_16/fc6/weights", None, None, "fc6", "fc6", None, None, "weights"),
        ("vgg_16/conv3/conv3_2/biases", "conv3", None, "conv3_2", "conv3_2", None, None, "biases"),
        ("MobilenetV1/Conv2d_3_depthwise/depthwise_weights", None, None, "Conv2d_3_depthwise", "Conv2d_3_depthwise", None, None, "depthwise_weights"),
    ],
)
def test_layer_parts(name, block, branch, layer, op, index, kernel, parameter):
    parsed = names.parse(name)
    assert (parsed.block, parsed.branch, parsed.layer) == (block, branch, layer)
    assert (parsed.op, parsed.index, parsed.kernel_hint, parsed.parameter) == (op, index, kernel, parameter)
    assert parsed.model_scope == name.split("/")[0]
    assert parsed.layer_path == "/".join(p for p in (block, branch, layer) if p)
    assert parsed.normalizer == ("BatchNorm" if parameter.startswith("BatchNorm/") else None)
    assert parsed.is_model_variable and parsed.role == "model" and rejoin(parsed) == name


def test_quirky_layers_stay_distinct():
    seven_b = names.parse("InceptionV3/Mixed_7b/Branch_1/Conv2d_0b_3x1/weights")
    seven_c = names.parse("InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1/weights")
    assert seven_b.layer_path != seven_c.layer_path.replace("Mixed_7c", "Mixed_7b")
    assert (seven_b.index, seven_c.index) == ("0b", "0c")


@pytest.mark.parametrize(
    "suffix, is_ema, slot, optimizer, role",
    [
        (EMA, True, None, None, "ema"),
        ("RMSProp", False, "RMSProp", "RMSProp", "slot"),
        ("RMSProp_1", False, "RMSProp_1", "RMSProp", "slot"),
        ("Momentum", False, "Momentum", "Momentum", "slot"),
        ("Adam", False, "Adam", "Adam", "slot"),
        ("Adam_1", False, "Adam_1", "Adam", "slot"),
        ("Adagrad", False, "Adagrad", "Adagrad", "slot"),
        ("Ftrl", False, "Ftrl", "Ftrl", "slot"),
        ("Ftrl_1", False, "Ftrl_1", "Ftrl", "slot"),
        ("AdamW_1", False, "AdamW_1", "AdamW", "slot"),
        (f"RMSProp/{EMA}", True, "RMSProp", "RMSProp", "slot"),
        (f"{EMA}/Momentum", True, "Momentum", "Momentum", "slot"),
    ],
)
def test_ema_and_slot_suffixes(suffix, is_ema, slot, optimizer, role):
    base = "tower_1/InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1/BatchNorm/beta"
    parsed = names.parse(f"{base}/{suffix}")
    assert (parsed.is_ema, parsed.slot, parsed.optimizer, parsed.role) == (is_ema, slot, optimizer, role)
    assert parsed.suffixes == tuple(suffix.split("/"))
    assert parsed.base_name == base
    assert parsed.local_name == "InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1/BatchNorm/beta"
    assert parsed.layer_path == "Mixed_6c/Branch_2/Conv2d_0d_7x1" and parsed.parameter == "BatchNorm/beta"
    assert not parsed.is_model_variable


@pytest.mark.parametrize(
    "name, kind, prefix",
    [
        ("global_step", "global_step", None),
        ("tower_0/global_step", "global_step", "tower_0"),
        ("beta1_power", "optimizer", None),
        ("beta2_power_1", "optimizer", None),
        ("learning_rate", "learning_rate", None),
        (f"global_step/{EMA}", "global_step", None),
    ],
)
def test_non_layer_variables(name, kind, prefix):
    parsed = names.parse(name)
    assert (parsed.kind, parsed.prefix, parsed.model_scope, parsed.layer_path) == (kind, prefix, None, None)
    assert not parsed.is_model_variable and rejoin(parsed) == name
    assert parsed.role == ("ema" if name.endswith(EMA) else kind)


@pytest.mark.parametrize(
    "name, prefix, model_scope",
    [
        ("tower_0/InceptionV3/Conv2d_1a_3x3/weights", "tower_0", "InceptionV3"),
        ("model/InceptionV3/Conv2d_1a_3x3/weights", "model", "InceptionV3"),
        ("clone_3/model/resnet_v1_50/conv1/weights", "clone_3/model", "resnet_v1_50"),
        # a model scope that looks like a prefix stays the model scope when nothing else could be
        ("model/conv1/weights", None, "model"),
        ("custom_scope/vgg_16/fc6/weights", None, "custom_scope"),
    ],
)
def test_outer_prefix_default_rule(name, prefix, model_scope):
    parsed = names.parse(name)
    assert (parsed.prefix, parsed.model_scope) == (prefix, model_scope)
    assert rejoin(parsed) == name


@pytest.mark.parametrize(
    "name, model_scopes, prefix, model_scope, layer_path",
    [
        ("custom_scope/vgg_16/fc6/weights", ["vgg_16"], "custom_scope", "vgg_16", "fc6"),
        ("a/b/InceptionV3/Logits/Conv2d_1c_1x1/biases", ["InceptionV3"], "a/b", "InceptionV3", "Logits/Conv2d_1c_1x1"),
        ("tower_0/model/conv1/weights", ["model"], "tower_0", "model", "conv1"),
        ("net/InceptionV3/Conv2d_1a_3x3/weights", ["net/InceptionV3", "InceptionV3"], None, "net/InceptionV3", "Conv2d_1a_3x3"),
        ("x/InceptionV3/InceptionV3/Conv2d_1a_3x3/weights", ["InceptionV3"], "x", "InceptionV3", "InceptionV3/Conv2d_1a_3x3"),
    ],
)
def test_model_scopes_choose_the_model_scope(name, model_scopes, prefix, model_scope, layer_path):
    parsed = names.parse(name, model_scopes=model_scopes)
    assert (parsed.prefix, parsed.model_scope, parsed.layer_path) == (prefix, model_scope, layer_path)
    assert rejoin(parsed) == name


@pytest.mark.parametrize(
    "name, model_scopes, problem",
    [
        ("", None, "empty name"),
        ("InceptionV3//Conv2d_1a_3x3/weights", None, "empty scope component"),
        ("/InceptionV3/Conv2d_1a_3x3/weights", None, "empty scope component"),
        ("InceptionV3/Conv2d_1a_3x3/weights/", None, "empty scope component"),
        ("weights", None, "no layer scope"),
        ("InceptionV3/weights", None, "no layer scope"),
        ("InceptionV3/BatchNorm/beta", None, "no layer scope"),
        ("InceptionV3/weights", ["InceptionV3"], "no layer scope"),
        ("InceptionV3/Conv2d_1a_3x3/weights", ["resnet_v1_50"], "not under the model scope"),
        ("InceptionV3/Conv2d_1a_3x3/weights:0", None, "tensor name"),
        ("InceptionV3/Conv 2d/weights", None, "characters outside"),
        ("InceptionV3/Conv2d_1a_3x3/stuff", None, "not a layer parameter"),
        ("InceptionV3/Mixed_6c/Branch_2/Conv2d_0d_7x1", None, "not a layer parameter"),
        ("InceptionV3/Conv2d_1a_3x3/weights/Adam/Adam_1", None, "two optimizer slot"),
        (f"InceptionV3/Conv2d_1a_3x3/weights/{EMA}/{EMA}", None, "two EMA"),
        ("RMSProp", None, "suffix with no variable"),
        ("model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE", None, "TF2 object"),
        ("_CHECKPOINTABLE_OBJECT_GRAPH", None, "TF2 object"),
    ],
)
def test_malformed_names_raise_one_line_naming_the_variable(name, model_scopes, problem):
    with pytest.raises(VariableNameError) as caught:
        names.parse(name, model_scopes=model_scopes)
    message = str(caught.value)
    assert repr(name) in message and problem in message and "\n" not in message
    assert isinstance(caught.value, ConvertError)


def test_parse_all_gathers_every_problem():
    good = ["InceptionV3/Conv2d_1a_3x3/weights", "global_step"]
    bad = ["a//b/weights", "InceptionV3/weights", "x/y/z", "", "q/r/s"]
    assert list(names.parse_all(good)) == good
    with pytest.raises(VariableNameError) as caught:
        names.parse_all(good + bad)
    message = str(caught.value)
    assert message.startswith("5 of 7 names") and "and 2 more" in message and "\n" not in message


# (module, network function, arg_scope function, model scope): TF-Slim networks other than InceptionV3
SLIM_NETS = [
    ("tf_slim.nets.inception_v1", "inception_v1", "inception_v1_arg_scope", "InceptionV1"),
    ("tf_slim.nets.inception_v2", "inception_v2", "inception_v2_arg_scope", "InceptionV2"),
    ("tf_slim.nets.resnet_v1", "resnet_v1_50", "resnet_arg_scope", "resnet_v1_50"),
    ("tf_slim.nets.resnet_v2", "resnet_v2_50", "resnet_arg_scope", "resnet_v2_50"),
    ("tf_slim.nets.vgg", "vgg_16", "vgg_arg_scope", "vgg_16"),
]


@pytest.mark.parametrize("module, function, arg_scope, scope", SLIM_NETS, ids=[net[1] for net in SLIM_NETS])
def test_names_of_other_slim_networks(module, function, arg_scope, scope):
    """Every variable TF-Slim itself creates for these networks, under an outer prefix, parses and joins back."""
    tf, slim = tensorflow_and_slim("the networks' variable names come from building them (needs the tf extra)")
    net = importlib.import_module(module)
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3])
        with tf.compat.v1.variable_scope("tower_0"), slim.arg_scope(getattr(net, arg_scope)()):
            getattr(net, function)(images, num_classes=10)
        created = [variable.op.name for variable in tf.compat.v1.global_variables()]
    assert len(created) > 30
    for name in created:
        parsed = names.parse(name)
        assert (parsed.prefix, parsed.model_scope, parsed.kind) == ("tower_0", scope, "model"), name
        assert rejoin(parsed) == name
        assert parsed.local_name == name.removeprefix("tower_0/")
