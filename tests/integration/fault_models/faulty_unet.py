"""Test-only `unet`: the real one, except that a request whose ENCODER_HIDDEN_STATES carry FAULT_SENTINEL at
[row, 0, 0] makes `execute` raise, with this file's path in the message (the client must never see it)."""

from __future__ import annotations

from typing import Any

from model_repository import triton_edge
from model_repository.onnx_model import OnnxModel

FAULT_SENTINEL = 4242.0


class TritonPythonModel(OnnxModel):
    def execute(self, requests: list[Any]) -> list[Any]:
        for request in requests:
            hidden = triton_edge.input_arrays(request, ["ENCODER_HIDDEN_STATES"])["ENCODER_HIDDEN_STATES"]
            if hidden is not None and (hidden[:, 0, 0] == FAULT_SENTINEL).any():
                raise RuntimeError(f"injected fault in {__file__}")
        return super().execute(requests)
