"""Runs the VAE decoder one stage per request (see model_repository/staged_vae.py)."""

from model_repository.staged_vae import VaeStagesModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
