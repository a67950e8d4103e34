"""ckpt-convert: port TF-Slim checkpoints to PyTorch, Keras and ONNX, and prove the port equivalent."""

__version__ = "0.1.0"
