"""Model presets: the configs of the real diffusers/transformers classes, with seeded random weights.

* ``tiny``: unit-test fixtures (builds and exports in seconds); VAE scale factor 2, 2 UNet levels.
* ``bench``: CPU benchmarks with SD-1.5-shaped costs (medium UNet with head dim 32, VAE at 1/4 of SD's width).
* ``sd15``: the SD-1.5 architecture for GPU timing (large: about 1.07 G parameters; build only when asked).

Invariants: the text encoder's ``vocab_size`` and special-token ids are set from the tokenizer in use (see
``components.build_components``), its hidden size equals the UNet's ``cross_attention_dim``, and every preset
uses the SD-1.x scheduler constants below. Configs come from docs/research feasibility_cpu.md §2 and §4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

# SD-1.x training schedule, as the manifest's "scheduler" object (docs/interfaces.md).
SCHEDULER_CONFIG: Mapping[str, Any] = MappingProxyType({
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
})


@dataclass(frozen=True)
class Preset:
    """Configs for UNet2DConditionModel, AutoencoderKL and CLIPTextConfig (minus the tokenizer-dependent keys)."""

    name: str
    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text: Mapping[str, Any]
    default_size: int  # image side in pixels when a request gives none
    max_size: int  # largest image side in pixels a request may ask for
    scheduler: Mapping[str, Any] = field(default_factory=lambda: SCHEDULER_CONFIG)


TINY = Preset(
    name="tiny",
    unet=dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32),
    vae=dict(block_out_channels=[32, 64], in_channels=3, out_channels=3,
             down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
             latent_channels=4),
    text=dict(hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
              num_hidden_layers=5, max_position_embeddings=77),
    default_size=64,
    max_size=256,
)

BENCH = Preset(
    name="bench",
    # "medium-hd32": attention_head_dim is the number of heads per level -> head dim 32 everywhere.
    unet=dict(block_out_channels=(64, 128, 256), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=256, attention_head_dim=(2, 4, 8), norm_num_groups=32),
    vae=dict(block_out_channels=[32, 64, 128, 128], in_channels=3, out_channels=3,
             down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
             latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=256),
    text=dict(hidden_size=256, intermediate_size=1024, layer_norm_eps=1e-05, num_attention_heads=4,
              num_hidden_layers=6, max_position_embeddings=77),
    default_size=256,
    max_size=512,
)

SD15 = Preset(
    name="sd15",
    unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4,
              out_channels=4, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    vae=dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3,
             down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
             latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215),
    # CLIP ViT-L/14 text tower.
    text=dict(hidden_size=768, intermediate_size=3072, layer_norm_eps=1e-05, num_attention_heads=12,
              num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    default_size=512,
    max_size=1024,
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (TINY, BENCH, SD15)})


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
