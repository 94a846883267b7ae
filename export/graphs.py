"""The torch modules behind the exported graphs: each wraps a diffusers/transformers model with the graph's
positional inputs and single output (docs/interfaces.md), so the ONNX export, its verification and the torch
serving fallback (model_repository/torch_models.py) all run the same computation.
"""

from __future__ import annotations

import torch
from torch import nn


class TextEncoderGraph(nn.Module):
    """input_ids [B, 77] int64 -> last_hidden_state [B, 77, D]."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids, return_dict=False)[0]


class UNetGraph(nn.Module):
    """(sample [B,C,h,w], timestep [B] f32, encoder_hidden_states [B,77,D]) -> noise_pred [B,C,h,w]."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VAEDecoderGraph(nn.Module):
    """Raw latent [B,C,h,w] -> image [B,3,H,W]: divides by scaling_factor, then post_quant_conv + decoder."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]
