"""An in-process ONNX Runtime executor for the engine (no Triton): the exported graphs run in this process.

`OrtExecutor(model_dir)` implements the engine's `Executor` protocol over the export's graphs (docs/interfaces.md):
`unet.onnx`, `vae_decoder.onnx` (any latent size: whole images or tiles) and the manifest's `vae_stages` graphs,
plus `encode_prompt_pair`, which does what the server's `preprocess` and `text_encoder` models do. Sessions are
made as the server makes them (model_repository.onnx_model.quiet_session), lazily, one per graph. The async
methods run ORT synchronously: a call blocks the event loop until it is done, so the engine's concurrent lanes
run one after another here, which changes nothing in the results (the engine's arithmetic is per row and ORT on
CPU is batch-invariant). For measurements (perf/quality.py) and tests, not for timing concurrency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model_repository.onnx_model import quiet_session
from scheduler_backend.limits import Limits, ModelSpec, read_manifest
from scheduler_backend.prompt_tokens import TokenLayout
from scheduler_backend.sampler import NoiseSchedule
from scheduler_backend.vae_chunks import ChunkingSpec, VaeJob

# The export's tensor names (docs/interfaces.md); the server's model configs bind the same ones.
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "last_hidden_state"
UNET_INPUTS, UNET_OUTPUT = ("sample", "timestep", "encoder_hidden_states"), "noise_pred"
VAE_INPUT, VAE_OUTPUT = "latent", "image"


class OrtExecutor:
    def __init__(self, model_dir: Path | str, threads: int = 2) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: dict[str, Any] = read_manifest(self.model_dir)
        self.spec = ModelSpec.from_manifest(self.manifest)
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        self._tokenizer: Any = None

    # -- what an engine needs besides the executor ---------------------------------------------------

    def limits(self, **bounds: Any) -> Limits:
        return Limits(self.spec, **bounds)

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.manifest["scheduler"])

    # -- sessions -------------------------------------------------------------------------------------

    def _session(self, file: str) -> Any:
        session = self._sessions.get(file)
        if session is None:
            session = self._sessions[file] = quiet_session(str(self.model_dir / file), self.threads)
        return session

    def _stage_file(self, stage: int) -> str:
        stages = self.manifest.get("vae_stages")
        if stages is None:
            raise ValueError(f"{self.model_dir} was exported without VAE stage graphs; re-export it")
        files = stages["files"]
        if not 0 <= stage < len(files):
            raise ValueError(f"VAE stage {stage} out of range: the export has {len(files)} stages")
        return files[stage]

    # -- the Executor protocol ------------------------------------------------------------------------

    async def run_unet(self, samples: np.ndarray, timesteps: np.ndarray,
                       text_embeddings: np.ndarray) -> np.ndarray:
        feeds = dict(zip(UNET_INPUTS, (samples, timesteps, text_embeddings)))
        return self._session(self.manifest["files"]["unet"]).run([UNET_OUTPUT], feeds)[0]

    async def run_vae(self, latents: np.ndarray) -> np.ndarray:
        return self.decode_batch(latents)

    async def run_vae_stage(self, stage: int, hidden: np.ndarray) -> np.ndarray:
        session = self._session(self._stage_file(stage))  # checks that the export has stage graphs
        stages = self.manifest["vae_stages"]
        return session.run([stages["output"]], {stages["input"]: hidden})[0]

    # -- synchronous helpers --------------------------------------------------------------------------

    def decode_batch(self, latents: np.ndarray) -> np.ndarray:
        """vae_decoder.onnx on raw latents [B, C, h, w] (whole or tiles) -> images [B, 3, H, W] in about [-1, 1]."""
        return self._session(self.manifest["files"]["vae_decoder"]).run(
            [VAE_OUTPUT], {VAE_INPUT: np.ascontiguousarray(latents, dtype=np.float32)})[0]

    def token_ids(self, prompt: str, negative: str = "") -> np.ndarray:
        """[2, L] int64: (negative, prompt) as the server's `preprocess` model builds them."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.model_dir / self.manifest["files"]["tokenizer"]))
        text = self.manifest["text"]
        layout = TokenLayout(text["bos_id"], text["eos_id"], text["pad_id"], text["max_length"])
        return np.stack([layout.row(self._tokenizer.encode(t, add_special_tokens=False).ids)
                         for t in (negative, prompt)])

    def encode_prompt_pair(self, prompt: str, negative: str = "") -> np.ndarray:
        """[2, L, D] float32: row 0 the negative (unconditional) prompt, row 1 the prompt, as `Engine.add` takes."""
        session = self._session(self.manifest["files"]["text_encoder"])
        return session.run([TEXT_OUTPUT], {TEXT_INPUT: self.token_ids(prompt, negative)})[0]

    async def decode(self, latent: np.ndarray, chunking: ChunkingSpec = ChunkingSpec()) -> np.ndarray:
        """One raw latent [C, h, w] -> image [3, H, W], chunk by chunk through a `VaeJob` as the engine runs it."""
        job = VaeJob(latent, chunking, self.spec.vae_scale_factor, self.spec.vae_stages)
        while not job.done:
            chunk, batch = job.next_chunk, np.ascontiguousarray(job.chunk_input()[None])
            if chunk.kind.startswith("stage"):
                output = await self.run_vae_stage(chunk.index, batch)
            else:
                output = await self.run_vae(batch)
            job.complete(output[0])
        return job.image
