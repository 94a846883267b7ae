"""diffusion: the SynerDiff loop as a decoupled Python-backend model (one instance).

`execute` (async; the stub runs it on its event loop without waiting for it) validates each request,
encodes its prompt through BLS when it came with text, and hands it to the engine. One long-lived task on
the same event loop runs the engine: check cancellations, `engine.step()`, send what the step produced.
Everything runs on one thread, so the engine needs no locks.

Guarantees kept here: every request gets exactly one final response (image or error) on every path —
invalid input, full queue, queue timeout, cancellation, stop by request id, model failure, loop failure,
shutdown; a cancelled or stopped request leaves the batch before the next step.

A request carrying only STOP_REQUEST_ID is a control request: every live request whose client-given id
equals it ends CANCELLED, and the control request is answered with STOPPED (how many).

Parameters: `model_dir`, `policy`, `max_waiting_requests`, `max_running_requests`, `queue_timeout_s` (0: none),
`vae_chunking`, `profile` (the latency profile JSON; the synerdiff policies need it), `loop_tensors` (where the
loop's tensors live: `numpy` in host memory, or `torch:cuda` on the GPU across BLS calls; bls_executor.py).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from model_repository import triton_edge
from model_repository.bls_executor import BlsExecutor, LoopTensors
from model_repository.diffusion_metrics import DiffusionMetrics
from scheduler_backend.engine import Engine, Event, RequestFinished, StepProgress, StepReport
from scheduler_backend.errors import Cancelled, ExecutionFailed, Overloaded, SynerDiffError
from scheduler_backend.limits import Limits, ModelSpec, read_manifest
from scheduler_backend.policies import PolicySettings, ServingPolicy, make_policy, needs_profile
from scheduler_backend.profile import LatencyProfile
from scheduler_backend.request import (GENERATION_INPUTS, PROMPT_EMBEDS, STOP_REQUEST_ID, STOPPED, GenerationParams,
                                       validate_generation, validate_parameters, validate_request_id, validate_stop)
from scheduler_backend.sampler import NoiseSchedule
from scheduler_backend.vae_chunks import ChunkingSpec

_NO_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)
_INPUTS = (*GENERATION_INPUTS, STOP_REQUEST_ID)


def serving_limits(parameters: Mapping[str, str], manifest: Mapping[str, Any]) -> Limits:
    queue_timeout_s = float(parameters.get("queue_timeout_s") or 0)
    return Limits(ModelSpec.from_manifest(manifest),
                  max_waiting_requests=int(parameters.get("max_waiting_requests", "64")),
                  max_running_requests=int(parameters.get("max_running_requests", "16")),
                  queue_timeout_s=queue_timeout_s if queue_timeout_s > 0 else None)


def serving_policy(parameters: Mapping[str, str], limits: Limits) -> ServingPolicy:
    """The policy named by the `policy` parameter, with its latency profile and VAE chunking."""
    policy = parameters.get("policy", "synerdiff")
    if needs_profile(policy) and not parameters.get("profile"):
        raise ValueError(f"policy {policy!r} needs a latency profile: run `synerdiff profile` and render with it")
    profile = LatencyProfile.load(parameters["profile"]) if needs_profile(policy) else None
    chunking = ChunkingSpec.parse(parameters.get("vae_chunking", "stages"))
    return make_policy(policy, limits, profile, PolicySettings(vae_chunking=chunking))


@dataclass
class _Client:
    request: Any
    sender: Any
    params: GenerationParams
    arrived_s: float
    client_id: str  # the id the client gave the request ("" when none), for stop-by-request-id


class TritonPythonModel:
    def initialize(self, args: Mapping[str, str]) -> None:
        parameters = triton_edge.config_parameters(args)
        manifest = read_manifest(parameters["model_dir"])
        self._limits = serving_limits(parameters, manifest)
        serving = serving_policy(parameters, self._limits)
        tensors = LoopTensors.parse(parameters.get("loop_tensors") or "numpy")
        self._executor = BlsExecutor(tensors.memory)
        self._engine = Engine(self._executor, serving.planner, self._limits, NoiseSchedule.from_dict(manifest["scheduler"]),
                              chunking=serving.chunking, skip_cfg=serving.skip_cfg, arrays=tensors.arrays)
        self._metrics = DiffusionMetrics(triton_edge.MetricFactory(args["model_name"]))
        self._clients: dict[str, _Client] = {}
        self._ids = itertools.count()
        self._intake: dict[str, str] = {}  # requests between validation and engine.add: id -> client id
        self._stopped_in_intake: set[str] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        triton_edge.log_info(f"diffusion: policy {serving.name} (VAE chunking {serving.chunking.describe()}, "
                             f"Skip-CFG {serving.skip_cfg}), limits {self._limits}, tensors {tensors.arrays.name}")

    # -- intake ---------------------------------------------------------------------------------

    async def execute(self, requests: list[Any]) -> None:
        self._start_loop()
        await asyncio.gather(*(self._accept(request, sender)
                               for request, sender in triton_edge.iter_requests(requests)))
        return None

    async def _accept(self, request: Any, sender: Any) -> None:
        request_id = f"r{next(self._ids)}"
        try:
            options = validate_parameters(triton_edge.request_parameters(request), self._limits)
            fields = triton_edge.input_arrays(request, _INPUTS)
            if fields[STOP_REQUEST_ID] is not None:
                self._stop(validate_stop(fields, self._limits), sender)
                return
            client_id = validate_request_id(triton_edge.request_id(request), self._limits, "request id")
            params = validate_generation(fields, self._limits, lambda: secrets.randbits(32))
            self._check_capacity()
            arrived_s = time.monotonic()
            self._intake[request_id] = client_id
            try:
                embeddings = (await self._executor.encode_prompts(params.prompts) if params.prompts is not None
                              else np.array(fields[PROMPT_EMBEDS], dtype=np.float32))
            finally:
                del self._intake[request_id]
                stopped_meanwhile = request_id in self._stopped_in_intake
                self._stopped_in_intake.discard(request_id)
            if self._closing:
                raise Overloaded("the server is shutting down")
            if stopped_meanwhile or request.is_cancelled():
                raise Cancelled("before it was queued")
            self._engine.add(request_id, params, embeddings, options.queue_timeout_s)
        except SynerDiffError as error:
            self._metrics.rejected(error)
            triton_edge.send_final(sender, error)
            return
        except Exception as error:  # never leave a request without its final response
            triton_edge.log_error(f"diffusion: intake failed: {error!r}")
            triton_edge.send_final(sender, ExecutionFailed("internal error while accepting the request"))
            return
        self._clients[request_id] = _Client(request, sender, params, arrived_s, client_id)
        assert self._wake is not None
        self._wake.set()

    def _check_capacity(self) -> None:
        if self._closing:
            raise Overloaded("the server is shutting down")
        self._engine.ensure_capacity(reserved=len(self._intake))

    def _stop(self, client_id: str, sender: Any) -> None:
        """End every live request the client named `client_id`; answer with how many."""
        stopping = [request_id for request_id, client in self._clients.items() if client.client_id == client_id]
        for request_id in stopping:
            event = self._engine.abort(request_id, Cancelled("stopped by its request id"))
            if event is not None:
                self._deliver([event])
        in_intake = [request_id for request_id, named in self._intake.items() if named == client_id]
        self._stopped_in_intake.update(in_intake)
        triton_edge.send_final(sender, {STOPPED: np.array([len(stopping) + len(in_intake)], dtype=np.int32)})

    # -- the loop -------------------------------------------------------------------------------

    def _start_loop(self) -> None:
        """Start the loop task on the stub's event loop (known only inside execute); restart it if it died."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        ending: SynerDiffError = Overloaded("the server is shutting down")
        try:
            while not self._closing:
                if not self._engine.has_work:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._reap_cancelled()
                report = await self._engine.step()
                self._deliver(report.events)
                self._record(report)
                if report.is_idle:  # nothing progresses until a request arrives or leaves, or the planner's time
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), report.retry_after_s)
                    except asyncio.TimeoutError:
                        pass
        except Exception as error:
            triton_edge.log_error(f"diffusion: loop failed: {error!r}")
            ending = ExecutionFailed("the generation loop failed; see the server log")
        finally:
            self._deliver(self._engine.fail_all(ending))

    def _record(self, report: StepReport) -> None:
        try:
            self._metrics.step(report, self._engine)
        except Exception as error:  # metrics must never stop generation
            triton_edge.log_error(f"diffusion: metrics: {error!r}")

    def _reap_cancelled(self) -> None:
        for request_id, client in list(self._clients.items()):
            if client.request.is_cancelled():
                event = self._engine.abort(request_id, Cancelled("by the client"))
                if event is not None:
                    self._deliver([event])

    def _deliver(self, events: list[Event] | tuple[Event, ...]) -> None:
        for event in events:
            if isinstance(event, StepProgress):
                client = self._clients.get(event.request_id)
                if client is not None:
                    self._send(client, triton_edge.response(self._outputs(client, _NO_IMAGE, event.steps_done)))
            elif isinstance(event, RequestFinished):
                client = self._clients.pop(event.request_id, None)
                if client is not None:
                    self._finish(event.request_id, client, event)

    def _finish(self, request_id: str, client: _Client, event: RequestFinished) -> None:
        """The final response first; bookkeeping after, and never at its expense."""
        outcome = event.error if event.error is not None else self._outputs(client, event.image,
                                                                            client.params.num_steps)
        try:
            triton_edge.send_final(client.sender, outcome)
        except Exception as error:  # the client is gone; nothing more can be sent
            triton_edge.log_error(f"diffusion: final response for {request_id} not sent: {error!r}")
        try:
            self._metrics.finished(event, time.monotonic() - client.arrived_s)
        except Exception as error:
            triton_edge.log_error(f"diffusion: metrics: {error!r}")

    @staticmethod
    def _outputs(client: _Client, image: np.ndarray | None, step: int) -> dict[str, np.ndarray]:
        assert image is not None
        return {"IMAGE": image, "STEP": np.array([step], dtype=np.int32),
                "SEED_USED": np.array([client.params.seed], dtype=np.int64)}

    @staticmethod
    def _send(client: _Client, message: Any) -> None:
        try:
            client.sender.send(message)
        except Exception:  # a progress message to a client that left; its final comes via cancellation
            pass

    # -- shutdown -------------------------------------------------------------------------------

    def finalize(self) -> None:
        """Give every live request its final response (UNAVAILABLE) and stop the loop.

        Measured on 2.51: the stub's event loop runs no callbacks while `finalize` runs, so waiting for
        the loop task to wind down only burns the exit timeout. The requests are ended from here; a
        step still in flight finds them gone (the engine drops results of requests no longer live).
        """
        self._closing = True
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)
        self._deliver(self._engine.fail_all(Overloaded("the server is shutting down")))
        self._metrics.close()
