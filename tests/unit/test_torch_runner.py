"""The torch serving fallback (model_repository/torch_runner.py) on the CPU: the modules it loads from the export's
`torch/` directory compute what the ONNX graphs compute (float32 here; float16 on a GPU is tests/gpu's business).
Served end to end: tests/integration/test_torch_fallback.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_repository.torch_runner import GraphRunner, c_order, load_graph, serving_dtype

CPU = torch.device("cpu")
TOLERANCE = 1e-4  # float32 torch vs ONNX Runtime; observed about 3e-6


def onnx_output(tiny_dir: Path, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(tiny_dir / graph), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def runner(tiny_dir: Path, graph: str) -> GraphRunner:
    module = load_graph(tiny_dir, graph, serving_dtype(CPU))
    assert isinstance(module, torch.nn.Module)
    return GraphRunner(module, CPU, max_cuda_graphs=8)


@pytest.fixture(scope="module")
def latent() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 4, 16, 24), dtype=np.float32)


def test_unet_matches_the_onnx_graph_with_a_timestep_per_row(tiny_dir: Path, latent: np.ndarray) -> None:
    timesteps = np.array([999.0, 500.0, 1.0], dtype=np.float32)
    text = np.random.default_rng(1).standard_normal((3, 77, 32), dtype=np.float32)
    unet = runner(tiny_dir, "unet")
    ours = unet([latent, timesteps, text])
    reference = onnx_output(tiny_dir, "unet.onnx", {"sample": latent, "timestep": timesteps,
                                                    "encoder_hidden_states": text})
    assert ours.dtype == np.float32 and ours.shape == latent.shape
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE)
    assert unet.captured_shapes == []  # CUDA graphs only on a GPU


def test_vae_decoder_and_text_encoder_match_the_onnx_graphs(tiny_dir: Path, latent: np.ndarray,
                                                            manifest: dict[str, Any]) -> None:
    image = runner(tiny_dir, "vae_decoder")([latent])
    assert image.shape == (3, 3, 32, 48)
    np.testing.assert_allclose(image, onnx_output(tiny_dir, "vae_decoder.onnx", {"latent": latent}), atol=TOLERANCE)
    ids = np.full((2, 77), manifest["text"]["pad_id"], dtype=np.int64)
    ids[:, 0], ids[1, 1:4] = manifest["text"]["bos_id"], [320, 1125, 539]
    embeddings = runner(tiny_dir, "text_encoder")([ids])  # int64 ids are not cast to the float dtype
    np.testing.assert_allclose(embeddings, onnx_output(tiny_dir, "text_encoder.onnx", {"input_ids": ids}),
                               atol=TOLERANCE)


def test_vae_stages_match_their_graphs_and_chain_to_the_decode(tiny_dir: Path, latent: np.ndarray) -> None:
    stages = load_graph(tiny_dir, "vae_stages", torch.float32)
    assert isinstance(stages, list) and len(stages) == 3
    hidden = latent
    for k, stage in enumerate(stages):
        output = GraphRunner(stage, CPU)([hidden])
        np.testing.assert_allclose(output, onnx_output(tiny_dir, f"vae_stage_{k}.onnx", {"hidden": hidden}),
                                   atol=TOLERANCE)
        hidden = output
    np.testing.assert_allclose(hidden, runner(tiny_dir, "vae_decoder")([latent]), atol=TOLERANCE)


def test_dtypes_and_unknown_graphs(tiny_dir: Path) -> None:
    assert serving_dtype(CPU) == torch.float32 and serving_dtype(torch.device("cuda", 0)) == torch.float16
    with pytest.raises(ValueError, match="unknown graph"):
        load_graph(tiny_dir, "controlnet", torch.float32)


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return torch.empty(shape).stride()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("graph", ["vae_decoder", "vae_stages"])
def test_outputs_are_answered_in_c_order(tiny_dir: Path, latent: np.ndarray, graph: str, batch: int) -> None:
    """Triton takes DLPack tensors in C order only, and torch's CPU convolutions answer channels-last (a batch of
    more than one; a batch of one with odd strides): `run` hands back C order, strides and all (the served cpu-torch
    VAE failed on such outputs before)."""
    loaded = load_graph(tiny_dir, graph, torch.float32)
    hidden = torch.from_numpy(latent[:batch])
    for module in loaded if isinstance(loaded, list) else [loaded]:
        hidden = GraphRunner(module, CPU).run([hidden])
        assert hidden.stride() == c_strides(tuple(hidden.shape))


def test_c_order_copies_only_what_is_not_in_c_order() -> None:
    plain = torch.zeros(2, 3, 4, 4)
    assert c_order(plain) is plain
    odd_batch_stride = torch.zeros(100).as_strided((1, 3, 4, 4), (7, 16, 4, 1))  # is_contiguous() says yes
    channels_last = torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last)
    for tensor in (odd_batch_stride, channels_last):
        ordered = c_order(tensor)
        assert ordered.stride() == c_strides(tuple(tensor.shape)) and torch.equal(ordered, tensor)
