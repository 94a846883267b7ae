"""Runs this model's transformers module with torch (see model_repository/torch_models.py)."""

from model_repository.torch_models import TorchGraphModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
