"""Forwards each VAE stage to its TensorRT engine (see model_repository/stage_router.py)."""

from model_repository.stage_router import VaeStageRouter as TritonPythonModel

__all__ = ["TritonPythonModel"]
