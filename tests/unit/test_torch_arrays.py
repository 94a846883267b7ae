"""model_repository.torch_arrays: the engine on torch tensors (how a GPU loop keeps its tensors on the GPU) gives the
numpy engine's images bit for bit on the CPU, for every policy and VAE chunking, with the same model calls; and each
`Arrays` operation matches numpy's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from model_repository.torch_arrays import TorchArrays
from scheduler_backend.arrays import NUMPY, Arrays, NumpyArrays
from scheduler_backend.engine import Engine, RequestFinished
from scheduler_backend.limits import Limits
from scheduler_backend.policies import POLICIES, PolicySettings, make_policy
from test_engine import SCHEDULE, FakeExecutor
from test_engine_mechanisms import PROFILE, STAGED, STAGES, TILES, WHOLE, serve

TORCH_CPU = TorchArrays("cpu")


@dataclass
class TorchExecutor:
    """The fake executor behind torch tensors: checks that the engine hands it contiguous float32 tensors of the
    loop's device, and answers in tensors of that device, as the BLS executor of a torch loop does."""

    arrays: TorchArrays
    numpy_executor: FakeExecutor = field(default_factory=FakeExecutor)

    def _host(self, tensor: Any) -> np.ndarray:
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
        assert tensor.device == self.arrays.device
        assert tensor.is_contiguous(), "a BLS input must be contiguous"
        return tensor.cpu().numpy()

    def _device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.arrays.device)

    async def run_unet(self, samples: Any, timesteps: Any, text_embeddings: Any) -> torch.Tensor:
        return self._device(await self.numpy_executor.run_unet(
            self._host(samples), self._host(timesteps), self._host(text_embeddings)))

    async def run_vae(self, latents: Any) -> torch.Tensor:
        return self._device(await self.numpy_executor.run_vae(self._host(latents)))

    async def run_vae_stage(self, stage: int, hidden: Any) -> torch.Tensor:
        return self._device(await self.numpy_executor.run_vae_stage(stage, self._host(hidden)))


def run_mixed_workload(policy_name: str, chunking: Any, arrays: Arrays) -> tuple[dict[str, np.ndarray], FakeExecutor]:
    """test_engine_mechanisms' mixed workload under `policy_name` on `arrays` (NUMPY or a TorchArrays): the images,
    and the numpy fake executor that recorded the calls."""
    limits = Limits(STAGED, max_waiting_requests=64, max_running_requests=3)
    policy = make_policy(policy_name, limits, PROFILE, PolicySettings(vae_chunking=chunking,
                                                                        static_max_queue_delay_s=0.0))
    fake = FakeExecutor()
    executor = fake if isinstance(arrays, NumpyArrays) else TorchExecutor(arrays, fake)
    engine = Engine(executor, policy.planner, limits, SCHEDULE, chunking=policy.chunking, skip_cfg=policy.skip_cfg,
                    arrays=arrays)
    events = asyncio.run(serve(engine))
    ends = [event for event in events if isinstance(event, RequestFinished)]
    assert all(event.error is None and event.image is not None for event in ends)
    return {event.request_id: event.image for event in ends if event.image is not None}, fake


@pytest.mark.parametrize("chunking", [WHOLE, STAGES, TILES], ids=["whole", "stages", "tiles"])
@pytest.mark.parametrize("policy_name", POLICIES)
def test_a_torch_loop_gives_the_numpy_loops_images_bit_for_bit(policy_name: str, chunking: Any) -> None:
    on_numpy, numpy_calls = run_mixed_workload(policy_name, chunking, NUMPY)
    on_torch, torch_calls = run_mixed_workload(policy_name, chunking, TORCH_CPU)
    assert on_torch.keys() == on_numpy.keys() and len(on_numpy) > 0
    for request_id, image in on_numpy.items():
        assert isinstance(on_torch[request_id], np.ndarray) and on_torch[request_id].dtype == np.uint8
        assert np.array_equal(on_torch[request_id], image), request_id
    assert torch_calls.log == numpy_calls.log  # the same calls, rows and timesteps, in the same order


def test_each_operation_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(3)]
    on_torch = [TORCH_CPU.from_host(part) for part in parts]
    assert np.array_equal(TORCH_CPU.stack(on_torch).numpy(), NUMPY.stack(parts))
    assert np.array_equal(TORCH_CPU.concat(on_torch).numpy(), NUMPY.concat(parts))
    assert np.array_equal(TORCH_CPU.zeros((2, 5)).numpy(), NUMPY.zeros((2, 5)))
    decoded = rng.uniform(-1.3, 1.3, (2, 3, 8, 6)).astype(np.float32)
    decoded[0, 0, 0, :4] = [-1.0, 1.0, 1 / 255 - 1, 0.5 / 255 * 2 - 1]  # the clip ends and a tie of the rounding
    images = TORCH_CPU.to_host_images(TORCH_CPU.from_host(decoded))
    assert images.dtype == np.uint8 and images.shape == (2, 8, 6, 3)
    assert np.array_equal(images, NUMPY.to_host_images(decoded))


def test_from_host_copies_so_the_caller_may_reuse_its_array() -> None:
    host = np.ones((2, 2), dtype=np.float64)
    tensor = TORCH_CPU.from_host(host)
    host[:] = 7
    assert tensor.dtype == torch.float32 and float(tensor.sum()) == 4.0


def test_adopt_copies_a_dlpack_tensor_into_the_loops_own_float32_memory() -> None:
    producer = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    adopted = TORCH_CPU.adopt(producer)
    producer.zero_()
    assert adopted.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert TORCH_CPU.name == "torch:cpu"
