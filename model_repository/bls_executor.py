"""The engine's `Executor` over BLS: UNet, VAE (whole, tiles, stages) and text encoding run as other models
of the server.

Where the loop's tensors live is the `loop_tensors` choice (`LoopTensors.parse`):
* `numpy`: host memory. Every UNet and VAE call asks for its outputs on the host (a GPU model's are copied back).
* `torch:<device>` (`torch:cuda`, `torch:cuda:1`, `torch:cpu`): torch tensors on that device, handed to the models
  and taken back through DLPack, outputs asked for on that GPU: a GPU loop's latents and VAE activations never
  cross to the host; only the finished uint8 image does. `torch:cpu` runs the same path on the host (how it is
  tested without a GPU).
Text encoding answers in host numpy either way: the engine copies the embeddings in once, at admission.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from model_repository.triton_edge import HOST_NUMPY, OutputMemory, bls_infer
from scheduler_backend.arrays import NUMPY, Array, Arrays
from scheduler_backend.request import PromptPair


def torch_loop_device(text: str) -> str | None:
    """The torch device a `loop_tensors` value names, None for `numpy`; ValueError for anything else."""
    kind, _, device = text.strip().partition(":")
    if kind == "numpy" and not device:
        return None
    if kind != "torch" or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"loop_tensors {text!r}: use 'numpy' or 'torch:<device>' (torch:cuda, torch:cuda:1, "
                         f"torch:cpu)")
    return device


def loop_on_gpu(text: str) -> bool:
    """Whether a `loop_tensors` value keeps the loop's tensors on a GPU (ValueError for a bad value)."""
    return (torch_loop_device(text) or "").startswith("cuda")


@dataclass(frozen=True)
class LoopTensors:
    arrays: Arrays
    memory: OutputMemory

    @classmethod
    def parse(cls, text: str) -> LoopTensors:
        """`numpy`, or `torch:<device>` with a torch device name (`cuda`, `cuda:1`, `cpu`)."""
        device = torch_loop_device(text)
        if device is None:
            return cls(NUMPY, HOST_NUMPY)
        from model_repository.torch_arrays import TorchArrays  # torch only where a torch loop is asked for

        arrays = TorchArrays(device)
        gpu = arrays.device.index if arrays.device.type == "cuda" else None
        return cls(arrays, OutputMemory(gpu=gpu, adopt=arrays.adopt))


class BlsExecutor:
    def __init__(self, memory: OutputMemory = HOST_NUMPY) -> None:
        self._memory = memory  # for the UNet and VAE calls, whose tensors are the loop's

    async def run_unet(self, samples: Array, timesteps: Array, text_embeddings: Array) -> Array:
        outputs = await bls_infer("unet", {"SAMPLE": samples, "TIMESTEP": timesteps,
                                           "ENCODER_HIDDEN_STATES": text_embeddings}, ["NOISE_PRED"], self._memory)
        return outputs["NOISE_PRED"]

    async def run_vae(self, latents: Array) -> Array:
        return (await bls_infer("vae_decoder", {"LATENT": latents}, ["IMAGE"], self._memory))["IMAGE"]

    async def run_vae_stage(self, stage: int, hidden: Array) -> Array:
        inputs = {"STAGE": np.array([stage], dtype=np.int32), "HIDDEN": hidden}
        return (await bls_infer("vae_stages", inputs, ["HIDDEN_OUT"], self._memory))["HIDDEN_OUT"]

    async def encode_prompts(self, prompts: PromptPair) -> np.ndarray:
        """[2, L, D]: (negative prompt, prompt) through `preprocess` and `text_encoder`, in host memory."""
        text = {"PROMPT": np.array([prompts.prompt.encode("utf-8")], dtype=np.object_),
                "NEGATIVE_PROMPT": np.array([prompts.negative_prompt.encode("utf-8")], dtype=np.object_)}
        token_ids = (await bls_infer("preprocess", text, ["TOKEN_IDS"]))["TOKEN_IDS"]
        return (await bls_infer("text_encoder", {"TOKEN_IDS": token_ids}, ["EMBEDDINGS"]))["EMBEDDINGS"]
