"""Runs the VAE decoder one stage per request with torch (see model_repository/torch_models.py)."""

from model_repository.torch_models import TorchVaeStagesModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
