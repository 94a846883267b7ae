"""The VAE decoder as K = 1 + len(decoder.up_blocks) sequential torch modules, for stage-by-stage decoding.

Stage 0: raw latent / scaling_factor -> post_quant_conv -> decoder.conv_in -> decoder.mid_block. Stage k >= 1:
decoder.up_blocks[k - 1]; the last stage also runs the output head (conv_norm_out, conv_act, conv_out).

Invariant: running the stages in order is exactly ``vae.decode(latent / scaling_factor)``: the same submodules
(shared, not copied) in the order of diffusers' ``Decoder.forward`` (0.42: no upcast step; ``latent_embeds`` is
None, so the mid and up blocks get ``temb=None`` and conv_norm_out is a plain GroupNorm). Tiling and slicing,
which ``decode`` could switch to, are off in exported VAEs.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from torch import nn


class LatentStage(nn.Module):
    """Stage 0: raw latent [B, C, h, w] -> mid-block output [B, c_0, h, w]."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.scaling_factor = float(vae.config.scaling_factor)
        self.post_quant_conv = vae.post_quant_conv if vae.post_quant_conv is not None else nn.Identity()
        self.conv_in = vae.decoder.conv_in
        self.mid_block = vae.decoder.mid_block

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.post_quant_conv(hidden / self.scaling_factor)
        return self.mid_block(self.conv_in(hidden), None)


class UpStage(nn.Module):
    """Stage k >= 1: one decoder up block; with ``head``, also the decoder's output head (the last stage)."""

    def __init__(self, up_block: nn.Module, head: Decoder | None) -> None:
        super().__init__()
        self.up_block = up_block
        self.head = (nn.Sequential(head.conv_norm_out, head.conv_act, head.conv_out) if head is not None
                     else nn.Identity())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.up_block(hidden, None))


def build_vae_stages(vae: AutoencoderKL) -> list[nn.Module]:
    """The K stages of ``vae``'s decoder, in eval mode; they share (not copy) the VAE's weights."""
    if vae.use_tiling or vae.use_slicing:
        raise ValueError("the VAE decodes tiled or sliced; its stages would not equal vae.decode")
    decoder = vae.decoder
    last = len(decoder.up_blocks) - 1
    stages = [LatentStage(vae)] + [UpStage(block, decoder if i == last else None)
                                   for i, block in enumerate(decoder.up_blocks)]
    return [stage.eval() for stage in stages]
