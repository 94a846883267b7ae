"""The torch modules of one SD-style model: built from a preset (seeded random weights) or loaded from a local
diffusers checkpoint directory.

``build_components(preset, seed)`` is the single source of the models, so later work (structural VAE chunks,
golden comparisons against diffusers) rebuilds exactly what was exported. Invariants: modules are float32, in
eval() and without grad; ``torch.manual_seed(seed)`` is called right before each model is built, so weights depend
only on (preset, seed, tokenizer vocab size); the text encoder's hidden size equals the UNet's cross-attention
width and its vocab covers the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from export.clip_vocab import BOS_TOKEN, EOS_TOKEN, BuiltTokenizer, build_tokenizer
from export.layout import TEXT_MAX_LENGTH
from export.presets import SCHEDULER_CONFIG, get_preset

MIN_SIZE_MULTIPLE = 8


@dataclass
class Components:
    """UNet, VAE, text encoder and tokenizer of one model, plus the constants the manifest needs."""

    name: str  # preset name, or "checkpoint:<dir name>"
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: BuiltTokenizer
    scheduler_config: dict[str, Any]
    default_size: int  # pixels
    max_size: int  # pixels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Every image side must be a multiple of this (docs/interfaces.md)."""
        unet_levels = len(self.unet.config.block_out_channels)
        return max(MIN_SIZE_MULTIPLE, self.vae_scale_factor * 2 ** (unet_levels - 1))

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def check_consistency(self) -> None:
        """Raise ValueError if the parts cannot work together."""
        problems = []
        if self.unet.config.cross_attention_dim != self.text_hidden_size:
            problems.append(f"UNet cross_attention_dim {self.unet.config.cross_attention_dim} "
                            f"!= text hidden size {self.text_hidden_size}")
        channels = {self.latent_channels, self.unet.config.out_channels, self.vae.config.latent_channels}
        if len(channels) != 1:
            problems.append("UNet in/out channels and VAE latent channels differ")
        if self.text_encoder.config.vocab_size < self.tokenizer.vocab_size:
            problems.append(f"text encoder vocab {self.text_encoder.config.vocab_size} "
                            f"< tokenizer vocab {self.tokenizer.vocab_size}")
        if self.text_encoder.config.max_position_embeddings < TEXT_MAX_LENGTH:
            problems.append(f"text encoder has fewer than {TEXT_MAX_LENGTH} positions")
        for label, size in (("default_size", self.default_size), ("max_size", self.max_size)):
            if size % self.size_multiple:
                problems.append(f"{label} {size} is not a multiple of {self.size_multiple}")
        if problems:
            raise ValueError(f"{self.name}: " + "; ".join(problems))

    def transformers_tokenizer(self) -> Any:
        """The tokenizer as a transformers fast tokenizer (for diffusers pipelines in golden tests)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.tokenizer.tokenizer, bos_token=BOS_TOKEN,
                                       eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                                       pad_token=self.tokenizer.tokenizer.id_to_token(self.tokenizer.pad_id),
                                       model_max_length=TEXT_MAX_LENGTH)


def _freeze(module: torch.nn.Module) -> None:
    module.float().eval().requires_grad_(False)


def build_components(preset: str, seed: int = 0, tokenizer_kind: str = "auto") -> Components:
    """The preset's models with random weights drawn after ``torch.manual_seed(seed)`` (once per model)."""
    spec = get_preset(preset)
    tokenizer = build_tokenizer(tokenizer_kind)
    text_config = CLIPTextConfig(**spec.text, vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_id,
                                 eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec.unet)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**spec.vae)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    for module in (unet, vae, text_encoder):
        _freeze(module)
    components = Components(spec.name, unet, vae, text_encoder, tokenizer, dict(spec.scheduler),
                            spec.default_size, spec.max_size)
    components.check_consistency()
    return components


def _read_scheduler_config(path: Path) -> dict[str, Any]:
    """The manifest's scheduler keys from a diffusers scheduler_config.json; absent keys take SD-1.x values."""
    raw: Mapping[str, Any] = json.loads(path.read_text())
    if raw.get("trained_betas") is not None:
        raise ValueError(f"{path}: trained_betas are not supported")
    config = {key: raw.get(key, default) for key, default in SCHEDULER_CONFIG.items()}
    if config["beta_schedule"] not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise ValueError(f"{path}: unsupported beta_schedule {config['beta_schedule']!r}")
    return config


def _load_checkpoint_tokenizer(tokenizer_dir: Path) -> BuiltTokenizer:
    from transformers import CLIPTokenizer

    # Reads the SD layout (vocab.json + merges.txt + tokenizer_config.json) or a tokenizer.json.
    loaded = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    backend = loaded.backend_tokenizer
    bos_id, eos_id = loaded.bos_token_id, loaded.eos_token_id
    # Without vocab files transformers silently builds a 3-token vocab; catch that and a missing BOS/EOS wrap.
    ids = backend.encode("a photo").ids
    if backend.get_vocab_size() <= 256 or bos_id is None or eos_id is None or ids[0] != bos_id or ids[-1] != eos_id:
        raise ValueError(f"{tokenizer_dir}: not a usable CLIP tokenizer (vocab.json + merges.txt or tokenizer.json "
                         f"with {BOS_TOKEN} ... {EOS_TOKEN})")
    pad_id = loaded.pad_token_id if loaded.pad_token_id is not None else eos_id
    return BuiltTokenizer(backend, "checkpoint", str(tokenizer_dir), bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


def load_checkpoint(checkpoint_dir: Path) -> Components:
    """Components from a local diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/); no hub.

    default_size is the UNet sample_size times the VAE scale factor; max_size is twice that.
    """
    root = Path(checkpoint_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    # low_cpu_mem_usage=False: the default needs `accelerate` (not a dependency) and logs a warning without it.
    unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True,
                                                low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True, low_cpu_mem_usage=False)
    text_encoder = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", local_files_only=True)
    for module in (unet, vae, text_encoder):
        _freeze(module)
    tokenizer = _load_checkpoint_tokenizer(root / "tokenizer")
    scheduler_config = _read_scheduler_config(root / "scheduler" / "scheduler_config.json")
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    default_size = int(unet.config.sample_size) * vae_scale_factor
    components = Components(f"checkpoint:{root.name}", unet, vae, text_encoder, tokenizer, scheduler_config,
                            default_size, 2 * default_size)
    components.check_consistency()
    return components
