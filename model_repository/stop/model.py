"""stop: stop-by-request-id for HTTP (and any) clients, forwarded to `diffusion` as a STOP_REQUEST_ID request.

The request id is the one the client gave its generation request (HTTP JSON `id`, tritonclient's
`request_id`). `execute` validates each request and answers it from a thread, as `txt2img_unary` does
(`triton_edge.answer_from_thread`): it never blocks on `diffusion`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from model_repository import triton_edge
from scheduler_backend.errors import SynerDiffError
from scheduler_backend.limits import Limits
from scheduler_backend.request import STOP_REQUEST_ID, STOPPED, validate_parameters, validate_stop_target

REQUEST_ID = "REQUEST_ID"


class TritonPythonModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        self._limits = Limits.from_model_dir(triton_edge.config_parameters(args)["model_dir"])

    def execute(self, requests: list[Any]) -> None:
        for request, sender in triton_edge.iter_requests(requests):
            try:
                validate_parameters(triton_edge.request_parameters(request), self._limits)
                client_id = validate_stop_target(triton_edge.input_arrays(request, (REQUEST_ID,)), REQUEST_ID,
                                                 self._limits)
            except SynerDiffError as error:
                triton_edge.send_final(sender, error)
                continue
            inputs = {STOP_REQUEST_ID: np.array([client_id.encode("utf-8")], dtype=np.object_)}
            triton_edge.answer_from_thread(sender, "diffusion", inputs, (STOPPED,))
        return None
