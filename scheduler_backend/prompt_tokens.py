"""Token-id rows for the CLIP text encoder: BOS, the prompt's tokens, EOS, then padding, truncated.

Prompts longer than the encoder's window are truncated to `max_length - 2` tokens, as diffusers does
(the client is not failed for it: the limit on prompt characters is what the validator enforces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class TokenLayout:
    bos_id: int
    eos_id: int
    pad_id: int
    max_length: int

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (BOS and EOS), got {self.max_length}")

    def row(self, token_ids: Sequence[int]) -> np.ndarray:
        """[max_length] int64: BOS, at most max_length - 2 tokens, EOS, padding."""
        body = list(token_ids)[: self.max_length - 2]
        ids = [self.bos_id, *body, self.eos_id]
        ids += [self.pad_id] * (self.max_length - len(ids))
        return np.asarray(ids, dtype=np.int64)
