"""Runs this model's ONNX graph with ONNX Runtime (see model_repository/onnx_model.py)."""

from model_repository.onnx_model import OnnxModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
