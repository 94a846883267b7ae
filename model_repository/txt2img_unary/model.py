"""txt2img_unary: one response per request, for HTTP /infer and gRPC unary clients.

`execute` hands each request to a thread and returns at once; the thread forwards the request to the
decoupled `diffusion` model (BLS) and answers through the request's response sender with the final
image, or with `diffusion`'s error response unchanged (its code and message reach the client). Since
Triton 24.06 a non-decoupled model may answer this way, exactly once, flagged final.
"""

from __future__ import annotations

import threading
from typing import Any

from model_repository import triton_edge
from scheduler_backend.errors import ExecutionFailed
from scheduler_backend.request import GENERATION_INPUTS, PROGRESS, PROMPT_EMBEDS

_FORWARDED = tuple(name for name in GENERATION_INPUTS if name not in (PROMPT_EMBEDS, PROGRESS))
_OUTPUTS = ("IMAGE", "STEP", "SEED_USED")


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> None:
        for request, sender in triton_edge.iter_requests(requests):
            # Input tensors are freed when execute returns: copy them out first.
            inputs = {name: array.copy() for name, array in
                      triton_edge.input_arrays(request, _FORWARDED).items() if array is not None}
            threading.Thread(target=self._forward, args=(inputs, sender), daemon=True).start()
        return None

    @staticmethod
    def _forward(inputs: dict[str, Any], sender: Any) -> None:
        try:
            outcome = triton_edge.bls_stream_final("diffusion", inputs, _OUTPUTS)
        except Exception as error:
            triton_edge.log_error(f"txt2img_unary: forwarding failed: {error!r}")
            outcome = ExecutionFailed("internal error while forwarding the request")
        if isinstance(outcome, (dict, BaseException)):
            triton_edge.send_final(sender, outcome)
        else:
            sender.send(outcome, flags=triton_edge.final_flag())
