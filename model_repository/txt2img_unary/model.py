"""txt2img_unary: one response per request, for HTTP /infer and gRPC unary clients.

`execute` validates each request with the core's validator (so a bad field gets INVALID_ARG naming it
here: error codes do not survive the decoupled BLS hop in 2.51), hands it to a thread and returns at
once. The thread forwards it to the decoupled `diffusion` model (BLS) and answers through the request's
response sender with the final image or the error. Since Triton 24.06 a non-decoupled model may answer
this way: exactly once, flagged final. The client's request id and parameters go along, so the `stop`
model can stop the request by its id and a requested queue timeout applies.
"""

from __future__ import annotations

from typing import Any, Mapping

from model_repository import triton_edge
from scheduler_backend.errors import SynerDiffError
from scheduler_backend.limits import Limits
from scheduler_backend.request import (GENERATION_INPUTS, PROGRESS, PROMPT_EMBEDS, REQUEST_PARAMETERS,
                                       validate_generation, validate_parameters, validate_request_id)

_FORWARDED = tuple(name for name in GENERATION_INPUTS if name not in (PROMPT_EMBEDS, PROGRESS))
_OUTPUTS = ("IMAGE", "STEP", "SEED_USED")


class TritonPythonModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        self._limits = Limits.from_model_dir(triton_edge.config_parameters(args)["model_dir"])

    def execute(self, requests: list[Any]) -> None:
        for request, sender in triton_edge.iter_requests(requests):
            # Input tensors are freed when execute returns: copy them out first.
            inputs = {name: array.copy() for name, array in
                      triton_edge.input_arrays(request, _FORWARDED).items() if array is not None}
            try:  # the seed drawn here is discarded: diffusion draws the one it uses and reports it
                parameters = triton_edge.request_parameters(request)
                validate_parameters(parameters, self._limits)
                parameters = {key: parameters[key] for key in REQUEST_PARAMETERS if key in parameters}
                client_id = validate_request_id(triton_edge.request_id(request), self._limits, "request id")
                validate_generation(inputs, self._limits, lambda: 0)
            except SynerDiffError as error:
                triton_edge.send_final(sender, error)
                continue
            triton_edge.answer_from_thread(sender, "diffusion", inputs, _OUTPUTS, client_id, parameters)
        return None
