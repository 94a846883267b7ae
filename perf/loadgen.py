"""Open-loop load generator for the real server: replays a workload (`perf.workload.Arrival`s) over gRPC streaming.

Job: send each arrival's request to the decoupled `diffusion` model at its offset from the start of the replay,
whatever the other requests are doing, and record when its first progress response and its final response came
and how it ended (`perf.report.RequestRecord`).

Invariants:
- exactly one RequestRecord per arrival, in arrival order, whatever happens to the request or to the code
  around it (replay asserts it before returning);
- times are seconds from the start of the replay on the event loop's monotonic clock; `arrival_s` is the
  scheduled offset, not the moment the request went out, so a late send counts against the latency;
- one gRPC stream (RPC) per request, all on one channel. Errors come in-band with neither a status nor the
  request id (no `triton_grpc_error` header: it can crash Triton 2.51, see client/api.py), so their code is read
  from the message; a stream per request makes every error attributable, and a client-side timeout cancels
  exactly that request server-side;
- outcomes (perf.report.OUTCOMES): "image" (a final response carrying an image), "rejected" (UNAVAILABLE: the
  waiting queue is full or the server is going away), "cancelled" (CANCELLED), "error" (anything else: an
  invalid argument, a client-side timeout, a stream that ended without an image, an unexpected exception).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from tritonclient.utils import InferenceServerException

from client.api import infer_inputs
from client.contract import STREAMING_MODEL, GenerationRequest, decode_result
from client.errors import GenerationError, error_from_exception
from client.stream import final_flag
from perf.report import RequestRecord
from perf.workload import Arrival

DEFAULT_TIMEOUT_S = 300.0
OUTCOME_OF_CODE = {"UNAVAILABLE": "rejected", "CANCELLED": "cancelled"}  # every other code is "error"


def generation_request(arrival: Arrival) -> GenerationRequest:
    return GenerationRequest(prompt=arrival.prompt, num_steps=arrival.num_steps,
                             guidance_scale=arrival.guidance_scale, seed=arrival.seed, height=arrival.height,
                             width=arrival.width, sampler=arrival.sampler)


def record_of(arrival: Arrival, first_progress_s: float | None, finished_s: float | None,
              outcome: str) -> RequestRecord:
    return RequestRecord(arrival.time_s, arrival.num_steps, arrival.guidance_scale > 1.0, first_progress_s,
                         finished_s, outcome)


def outcome_of(error: GenerationError) -> str:
    return OUTCOME_OF_CODE.get(error.code, "error")


def grpc_failure(rpc_error: grpc.RpcError) -> GenerationError:
    """The GenerationError for a stream that ended with a non-OK gRPC status (the transport failed or was cancelled)."""
    code = rpc_error.code() if callable(getattr(rpc_error, "code", None)) else None
    details = rpc_error.details() if callable(getattr(rpc_error, "details", None)) else str(rpc_error)
    return error_from_exception(InferenceServerException(msg=details or str(rpc_error),
                                                         status=str(code) if code is not None else None))


class _Exchange:
    """One request on its own stream: sends it, follows its responses, and knows how it ended."""

    def __init__(self, client: aiogrpc.InferenceServerClient, model: str, arrival: Arrival, progress: bool,
                 clock: _Clock) -> None:
        self.arrival, self.clock = arrival, clock
        self.request = {"model_name": model, "inputs": infer_inputs(grpcclient.InferInput,
                                                                    generation_request(arrival), progress)}
        self.client = client
        self.first_progress_s: float | None = None
        self.finished_s: float | None = None
        self.outcome = "error"

    def record(self) -> RequestRecord:
        return record_of(self.arrival, self.first_progress_s, self.finished_s, self.outcome)

    async def _requests(self) -> AsyncIterator[dict[str, Any]]:
        yield self.request

    async def run(self) -> None:
        """Follows the stream to its end; sets finished_s and outcome at the final response or the failure.

        The request iterator ends after the one request (a half-close), so Triton ends the RPC once the request
        is complete; draining to that end leaves nothing open. An RPC left unfinished is cancelled."""
        responses = self.client.stream_infer(self._requests())
        ended = False
        try:
            async for result, error in responses:
                if error is not None:  # in-band: the code is read from the message
                    self.finish(outcome_of(error_from_exception(error)))
                elif self.finished_s is None:
                    self._on_response(result)
            ended = True
        except grpc.RpcError as rpc_error:
            ended = True
            self.finish(outcome_of(grpc_failure(rpc_error)))
        finally:
            if not ended:
                responses.cancel()  # timed out or failed here: cancel the request server-side
        self.finish("error")  # a no-op unless the stream ended without a final response

    def _on_response(self, result: grpcclient.InferResult) -> None:
        """A progress response sets first_progress_s; an image, or a final flag without one, ends the request."""
        flag = final_flag(result)
        decoded = decode_result(result, final=bool(flag))
        if decoded.image is not None:
            self.finish("image")
        elif flag:
            self.finish("error")  # final without an image: the contract is broken
        elif self.first_progress_s is None:
            self.first_progress_s = self.clock.now()

    def finish(self, outcome: str) -> None:
        """The first terminal event wins; anything after it (e.g. the end of the stream) changes nothing."""
        if self.finished_s is None:
            self.finished_s, self.outcome = self.clock.now(), outcome


class _Clock:
    """Seconds since the replay started, on the running loop's monotonic clock."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()

    def now(self) -> float:
        return self.loop.time() - self.started

    async def sleep_until(self, offset_s: float) -> None:
        await asyncio.sleep(max(0.0, offset_s - self.now()))


async def _one(client: aiogrpc.InferenceServerClient, model: str, arrival: Arrival, progress: bool,
               timeout_s: float, clock: _Clock) -> RequestRecord:
    """The record of one arrival; never raises an Exception (a client-side failure is an "error" record)."""
    await clock.sleep_until(arrival.time_s)
    try:
        exchange = _Exchange(client, model, arrival, progress, clock)
    except Exception:  # inputs the client cannot encode (e.g. a seed beyond INT64)
        return record_of(arrival, None, clock.now(), "error")
    try:
        await asyncio.wait_for(exchange.run(), timeout_s)
    except Exception:  # a timeout, a malformed response, a client bug; an image already received still counts
        exchange.finish("error")
    return exchange.record()


def _settled(arrival: Arrival, outcome: RequestRecord | BaseException) -> RequestRecord:
    """The record of an arrival whose task ended with `outcome` (its record, or what escaped _one)."""
    if isinstance(outcome, RequestRecord):
        return outcome
    return record_of(arrival, None, None, "cancelled" if isinstance(outcome, asyncio.CancelledError) else "error")


async def replay(grpc_url: str, arrivals: Sequence[Arrival], *, model: str = STREAMING_MODEL,
                 timeout_s: float = DEFAULT_TIMEOUT_S, progress: bool = True) -> list[RequestRecord]:
    """Sends every arrival at its offset (open loop) to `model` at `grpc_url` (host:port); one record each.

    `timeout_s` bounds each request from the moment it is sent; past it the request is cancelled and
    recorded as "error". With `progress`, requests ask for per-step responses, so first_progress_s is set.
    """
    client = aiogrpc.InferenceServerClient(grpc_url)
    try:
        clock = _Clock()
        tasks = [asyncio.ensure_future(_one(client, model, arrival, progress, timeout_s, clock))
                 for arrival in arrivals]
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await client.close()
    records = [_settled(arrival, outcome) for arrival, outcome in zip(arrivals, outcomes)]
    assert len(records) == len(arrivals), f"{len(records)} records for {len(arrivals)} arrivals"
    return records


async def server_version(grpc_url: str) -> str | None:
    """The version of the server at `grpc_url` (e.g. "2.51.0") when it answers and is ready, else None."""
    client = aiogrpc.InferenceServerClient(grpc_url)
    try:
        if not await client.is_server_ready():
            return None
        return str((await client.get_server_metadata()).version)
    except InferenceServerException:
        return None
    finally:
        await client.close()
