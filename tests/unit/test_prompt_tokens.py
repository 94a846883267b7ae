"""scheduler_backend.prompt_tokens.TokenLayout.row: BOS, tokens, EOS, padding, truncated to the window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_backend.prompt_tokens import TokenLayout

BOS, EOS, PAD = 49406, 49407, 0
LAYOUT = TokenLayout(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=8)


def test_row_is_bos_tokens_eos_then_padding() -> None:
    assert LAYOUT.row([5, 6, 7]).tolist() == [BOS, 5, 6, 7, EOS, PAD, PAD, PAD]


def test_row_is_int64_of_max_length() -> None:
    row = LAYOUT.row([1, 2])
    assert row.dtype == np.int64
    assert row.shape == (8,)


def test_empty_prompt_is_bos_eos_and_padding() -> None:
    assert LAYOUT.row([]).tolist() == [BOS, EOS] + [PAD] * 6


def test_exactly_max_length_minus_two_tokens_fill_the_window_without_padding() -> None:
    assert LAYOUT.row(range(1, 7)).tolist() == [BOS, 1, 2, 3, 4, 5, 6, EOS]


def test_long_prompts_are_truncated_to_max_length_minus_two_tokens_and_keep_eos() -> None:
    assert LAYOUT.row(range(1, 100)).tolist() == [BOS, 1, 2, 3, 4, 5, 6, EOS]


def test_clip_layout_pads_with_eos() -> None:
    clip = TokenLayout(bos_id=BOS, eos_id=EOS, pad_id=EOS, max_length=77)
    row = clip.row([320, 2368])
    assert row.tolist() == [BOS, 320, 2368] + [EOS] * 74


def test_token_ids_beyond_int32_are_kept() -> None:
    assert LAYOUT.row([2**40])[1] == 2**40


@given(tokens=st.lists(st.integers(0, 49405), max_size=200), max_length=st.integers(2, 80))
def test_every_row_has_the_layout(tokens: list[int], max_length: int) -> None:
    row = TokenLayout(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=max_length).row(tokens).tolist()
    kept = min(len(tokens), max_length - 2)
    assert len(row) == max_length
    assert row[0] == BOS
    assert row[1:kept + 1] == tokens[:kept]
    assert row[kept + 1] == EOS
    assert row[kept + 2:] == [PAD] * (max_length - kept - 2)


def test_a_window_too_small_for_bos_and_eos_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_length"):
        TokenLayout(bos_id=1, eos_id=2, pad_id=2, max_length=1)
