"""Run ported ONNX models in onnxruntime."""

from converter import _warm
from converter.errors import ConvertError
from converter.runtimes import as_float32, to_nhwc
from converter.transforms import NHWC_TO_NCHW

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def describe(path, **_):
    return "onnxruntime"


def load_weights(path, plan=None):
    """Every initializer of the model, by name."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ConvertError("reading an ONNX port needs onnx: pip install 'ckpt-convert[onnx]'") from None
    model = onnx.load(str(path))
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def run(path, plan, images, *, device="cpu", **_):
    """Every end point the model outputs on ``images`` (NHWC); the provider that ran it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConvertError("running an ONNX port needs onnxruntime: pip install 'ckpt-convert[onnx]'") from None
    providers = [CPU_PROVIDER]
    if device == "cuda" and CUDA_PROVIDER in onnxruntime.get_available_providers():
        providers.insert(0, CUDA_PROVIDER)
    options = onnxruntime.SessionOptions()
    if _warm.threads():  # a share of the cores, where several models run at once
        options.intra_op_num_threads = options.inter_op_num_threads = _warm.threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    (model_input,) = session.get_inputs()
    # a model written with --input-layout nhwc takes TF-Slim's layout as it is
    nhwc = model_input.shape[-1] == images.shape[-1]
    batch = as_float32(images if nhwc else images.transpose(NHWC_TO_NCHW))
    if "float16" in model_input.type:
        batch = batch.astype("float16")
    names = [o.name for o in session.get_outputs() if o.name in plan.table.facts.end_points]
    values = session.run(names, {model_input.name: batch})
    outputs = {name: value.astype("float32") for name, value in zip(names, values)}
    return (outputs if nhwc else to_nhwc(outputs)), session.get_providers()[0]
