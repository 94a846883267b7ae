"""The engine's `Executor` over BLS: UNet, VAE (whole, tiles, stages) and text encoding run as other models
of the server."""

from __future__ import annotations

import numpy as np

from model_repository.triton_edge import bls_infer
from scheduler_backend.request import PromptPair


class BlsExecutor:
    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
        outputs = await bls_infer("unet", {"SAMPLE": samples, "TIMESTEP": timesteps,
                                           "ENCODER_HIDDEN_STATES": text_embeddings}, ["NOISE_PRED"])
        return outputs["NOISE_PRED"]

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        return (await bls_infer("vae_decoder", {"LATENT": latents}, ["IMAGE"]))["IMAGE"]

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        inputs = {"STAGE": np.array([stage], dtype=np.int32), "HIDDEN": hidden}
        return (await bls_infer("vae_stages", inputs, ["HIDDEN_OUT"]))["HIDDEN_OUT"]

    async def encode_prompts(self, prompts: PromptPair) -> np.ndarray:
        """[2, L, D]: (negative prompt, prompt) through `preprocess` and `text_encoder`."""
        text = {"PROMPT": np.array([prompts.prompt.encode("utf-8")], dtype=np.object_),
                "NEGATIVE_PROMPT": np.array([prompts.negative_prompt.encode("utf-8")], dtype=np.object_)}
        token_ids = (await bls_infer("preprocess", text, ["TOKEN_IDS"]))["TOKEN_IDS"]
        return (await bls_infer("text_encoder", {"TOKEN_IDS": token_ids}, ["EMBEDDINGS"]))["EMBEDDINGS"]
