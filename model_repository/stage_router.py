"""`vae_stages` of target `gpu`: the contract of staged_vae.py (STAGE k in [0, K), HIDDEN -> HIDDEN_OUT), served by
the TensorRT engine of stage k, model `vae_stage_<k>`, called through BLS.

TensorRT engines are whole Triton models, one per stage graph, so this model only routes. It hands the engine the
HIDDEN tensor as it arrived and returns the engine's HIDDEN_OUT as it came back: Triton tensors, never converted
to numpy here, so a tensor on the GPU stays there (no copy in this process). Parameters: `stage_count` (K).
Errors: a missing input or a STAGE out of range is INVALID_ARG; an engine failure is INTERNAL.
"""

from __future__ import annotations

from typing import Any, Mapping

from export.engine_profiles import vae_stage_model
from model_repository import triton_edge
from model_repository.staged_vae import HIDDEN, HIDDEN_OUT, STAGE, stage_index
from scheduler_backend.errors import InvalidArgument, SynerDiffError


class VaeStageRouter:
    def initialize(self, args: Mapping[str, str]) -> None:
        self._stage_count = int(triton_edge.config_parameters(args)["stage_count"])

    def execute(self, requests: list[Any]) -> list[Any]:
        replies = []
        for request in requests:
            try:
                replies.append(triton_edge.tensor_response(self._forward(request)))
            except SynerDiffError as error:
                replies.append(triton_edge.error_response(error))
        return replies

    def _forward(self, request: Any) -> list[Any]:
        tensors = triton_edge.input_tensors(request, [STAGE, HIDDEN])
        for name, tensor in tensors.items():
            if tensor is None:
                raise InvalidArgument(name, "is required")
        stage = stage_index(tensors[STAGE].as_numpy(), self._stage_count)  # STAGE comes from the host loop
        return triton_edge.bls_forward(vae_stage_model(stage), [tensors[HIDDEN]], [HIDDEN_OUT])
