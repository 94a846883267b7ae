"""preprocess: validates PROMPT / NEGATIVE_PROMPT and turns them into CLIP token-id rows.

Output TOKEN_IDS [2, L] int64: row 0 the negative (unconditional) prompt, row 1 the prompt.
Parameters: `model_dir` (the exported model directory: manifest.json, tokenizer/tokenizer.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model_repository import triton_edge
from scheduler_backend.errors import SynerDiffError
from scheduler_backend.limits import Limits, ModelSpec, read_manifest
from scheduler_backend.prompt_tokens import TokenLayout
from scheduler_backend.request import NEGATIVE_PROMPT, PROMPT, validate_prompts


class TritonPythonModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        from tokenizers import Tokenizer

        model_dir = Path(triton_edge.config_parameters(args)["model_dir"])
        manifest = read_manifest(model_dir)
        self._limits = Limits(ModelSpec.from_manifest(manifest))
        text = manifest["text"]
        self._layout = TokenLayout(text["bos_id"], text["eos_id"], text["pad_id"], text["max_length"])
        self._tokenizer = Tokenizer.from_file(str(model_dir / manifest["files"]["tokenizer"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        replies = []
        for request in requests:
            try:
                prompts = validate_prompts(triton_edge.input_arrays(request, [PROMPT, NEGATIVE_PROMPT]),
                                           self._limits)
            except SynerDiffError as error:
                replies.append(triton_edge.error_response(error))
                continue
            rows = [self._layout.row(self._tokenizer.encode(text, add_special_tokens=False).ids)
                    for text in (prompts.negative_prompt, prompts.prompt)]
            replies.append(triton_edge.response({"TOKEN_IDS": np.stack(rows)}))
        return replies
