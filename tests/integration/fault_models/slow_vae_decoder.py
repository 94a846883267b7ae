"""Test-only `vae_decoder`: the real one, each call held SECONDS_PER_CALL, so a test can act mid-decode."""

from __future__ import annotations

import time
from typing import Any

from model_repository.onnx_model import OnnxModel

SECONDS_PER_CALL = 1.0


class TritonPythonModel(OnnxModel):
    def execute(self, requests: list[Any]) -> list[Any]:
        time.sleep(SECONDS_PER_CALL)
        return super().execute(requests)
