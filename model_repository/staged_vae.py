"""`vae_stages`: the VAE decoder one stage per request, so a scheduler can interleave decoding with UNet steps.

Config parameters: `model_dir` (the exported model directory: its manifest's "vae_stages" names the K stage
graphs), `intra_op_threads`. Inputs: STAGE INT32 [1], k in [0, K); HIDDEN FP32 [B, c, h, w], the raw latent for
stage 0 and stage k - 1's HIDDEN_OUT for stage k. Output: HIDDEN_OUT FP32, the image [B, 3, H, W] at the last
stage. Chaining stages 0..K-1 gives vae_decoder's IMAGE (docs/interfaces.md). One ORT session per stage, with the
quiet options of onnx_model.py; a STAGE out of range is INVALID_ARG, an ORT failure INTERNAL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from model_repository import triton_edge
from model_repository.onnx_model import (intra_op_threads, max_input_elements, quiet_session, reply_each,
                                         required_inputs, run_session)
from scheduler_backend.errors import InvalidArgument
from scheduler_backend.limits import read_manifest

STAGE, HIDDEN, HIDDEN_OUT = "STAGE", "HIDDEN", "HIDDEN_OUT"


class StageGraphs(NamedTuple):
    """The manifest's "vae_stages": graph paths in stage order and their (shared) ONNX input and output names."""

    files: list[Path]
    input: str
    output: str

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> StageGraphs:
        stages = read_manifest(model_dir)["vae_stages"]
        return cls([model_dir / name for name in stages["files"]], stages["input"], stages["output"])


def stage_index(stage: np.ndarray, count: int) -> int:
    """The stage a STAGE tensor asks for; InvalidArgument unless it is in [0, count)."""
    index = int(stage.reshape(-1)[0])
    if not 0 <= index < count:
        raise InvalidArgument(STAGE, f"must be in [0, {count - 1}], got {index}")
    return index


class VaeStagesModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        parameters = triton_edge.config_parameters(args)
        graphs = StageGraphs.from_model_dir(Path(parameters["model_dir"]))
        self._sessions = [quiet_session(str(path), intra_op_threads(parameters)) for path in graphs.files]
        self._input, self._output = graphs.input, graphs.output
        self._name = args["model_name"]
        self._max_elements = max_input_elements(parameters)

    def execute(self, requests: list[Any]) -> list[Any]:
        return reply_each(requests, self._infer)

    def _infer(self, request: Any) -> dict[str, np.ndarray]:
        arrays = required_inputs(request, [STAGE, HIDDEN], self._max_elements)
        session = self._sessions[stage_index(arrays[STAGE], len(self._sessions))]
        (hidden_out,) = run_session(self._name, session, [self._output], {self._input: arrays[HIDDEN]})
        return {HIDDEN_OUT: hidden_out}
