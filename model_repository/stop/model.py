"""stop: stop-by-request-id for HTTP (and any) clients, forwarded to `diffusion` as a STOP_REQUEST_ID request.

The request id is the one the client gave its generation request (HTTP JSON `id`, tritonclient's
`request_id`). `execute` validates each request and hands it to a thread, which forwards it to `diffusion`
(BLS) and answers through the request's response sender, as `txt2img_unary` does: `execute` never blocks on
another model, so the stub stays responsive to Triton's health checks while `diffusion` is busy.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from model_repository import triton_edge
from scheduler_backend.errors import ExecutionFailed, InvalidArgument, SynerDiffError
from scheduler_backend.limits import Limits
from scheduler_backend.request import STOP_REQUEST_ID, STOPPED, validate_parameters, validate_request_id

REQUEST_ID = "REQUEST_ID"


class TritonPythonModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        self._limits = Limits.from_model_dir(triton_edge.config_parameters(args)["model_dir"])

    def execute(self, requests: list[Any]) -> None:
        for request, sender in triton_edge.iter_requests(requests):
            try:
                client_id = self._client_id(request)
            except SynerDiffError as error:
                triton_edge.send_final(sender, error)
                continue
            threading.Thread(target=_forward, args=(client_id, sender), daemon=True).start()
        return None

    def _client_id(self, request: Any) -> str:
        validate_parameters(triton_edge.request_parameters(request), self._limits)
        array = triton_edge.input_arrays(request, (REQUEST_ID,))[REQUEST_ID]
        if array is None or array.size != 1:
            raise InvalidArgument(REQUEST_ID, "must hold exactly one string")
        client_id = validate_request_id(array.reshape(-1)[0], self._limits, REQUEST_ID)
        if not client_id:
            raise InvalidArgument(REQUEST_ID, "must not be empty")
        return client_id


def _forward(client_id: str, sender: Any) -> None:
    outcome: dict[str, np.ndarray] | SynerDiffError
    try:
        inputs = {STOP_REQUEST_ID: np.array([client_id.encode("utf-8")], dtype=np.object_)}
        outcome = triton_edge.bls_stream_final("diffusion", inputs, (STOPPED,))
    except SynerDiffError as error:
        outcome = error
    except Exception as error:
        triton_edge.log_error(f"stop: forwarding failed: {error!r}")
        outcome = ExecutionFailed("internal error while stopping the request")
    triton_edge.send_final(sender, outcome)
