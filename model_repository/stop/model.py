"""stop: stop-by-request-id for HTTP (and any) clients, forwarded to `diffusion` as a STOP_REQUEST_ID request.

The request id is the one the client gave its generation request (HTTP JSON `id`, tritonclient's
`request_id`). Quick to answer, so it calls `diffusion` from `execute` itself.
"""

from __future__ import annotations

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
            triton_edge.send_final(sender, self._stop(request))
        return None

    def _stop(self, request: Any) -> dict[str, np.ndarray] | SynerDiffError:
        try:
            validate_parameters(triton_edge.request_parameters(request), self._limits)
            array = triton_edge.input_arrays(request, (REQUEST_ID,))[REQUEST_ID]
            if array is None or array.size != 1:
                raise InvalidArgument(REQUEST_ID, "must hold exactly one string")
            value = array.reshape(-1)[0]
            client_id = validate_request_id(value, self._limits, REQUEST_ID)
            if not client_id:
                raise InvalidArgument(REQUEST_ID, "must not be empty")
            inputs = {STOP_REQUEST_ID: np.array([client_id.encode("utf-8")], dtype=np.object_)}
            return triton_edge.bls_stream_final("diffusion", inputs, (STOPPED,))
        except SynerDiffError as error:
            return error
        except Exception as error:
            triton_edge.log_error(f"stop: forwarding failed: {error!r}")
            return ExecutionFailed("internal error while stopping the request")

