"""The format registry: every writer and runtime found by target and suffix, each satisfying its protocol."""

import pytest

from converter import backends
from converter.errors import ConvertError


@pytest.mark.parametrize("key", sorted(backends.FORMATS))
def test_every_format_loads_a_writer_and_a_runtime_of_its_protocols(key):
    found = backends.FORMATS[key]
    assert isinstance(found.writer(), backends.Writer)
    assert isinstance(found.runtime(), backends.Runtime)


def test_lookups_take_the_longest_suffix_and_name_what_is_known():
    assert backends.by_name("out/model.weights.h5").suffix == ".weights.h5"
    assert backends.by_name("out/model.h5").suffix == ".h5"
    assert backends.by_name("model.txt") is None
    with pytest.raises(ConvertError, match=r"model.pth: the onnx target writes .onnx files; rename the output"):
        backends.get("onnx", "model.pth")
    with pytest.raises(ConvertError, match=r"unknown target 'tensorflow'; choose one of keras, onnx, torch"):
        backends.get("tensorflow", "model.pb")


def test_a_format_is_registered_once():
    found = backends.FORMATS[("torch", ".pth")]
    with pytest.raises(ValueError, match=r"\('torch', '.pth'\) is registered twice"):
        backends.register(found)


def test_a_loader_that_gives_no_writer_is_refused():
    broken = backends.Format("torch", ".pt", "torch", lambda: object(), lambda: object())
    with pytest.raises(TypeError, match="is not a Writer"):
        broken.writer()
