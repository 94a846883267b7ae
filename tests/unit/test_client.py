"""Unit tests of client/: no Triton server.

Request building, response decoding and the stream callback are fed hand-made values; the
transport paths run against small in-process fakes of Triton's gRPC stream and HTTP infer
endpoints, which follow docs/interfaces.md (progress responses with IMAGE [0, 0, 3], a final
response flagged triton_final_response, errors as gRPC statuses or in-band messages).
"""

from __future__ import annotations

import _thread
import argparse
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    triton_to_np_dtype,
)

from client import (
    DiffusionClient,
    GeneratedImage,
    GenerationError,
    GenerationRequest,
    cli,
    generate_cli,
    save_png,
)
from client.api import infer_inputs
from client.contract import decode_result, input_arrays
from client.errors import error_from_exception
from client.stream import StreamCollector

IMAGE_SIDE_PX = 8


# ---------------------------------------------------------------------------------------------
# hand-made responses


def grpc_result(
    outputs: dict[str, np.ndarray], final: bool | None = None
) -> grpcclient.InferResult:
    """A tritonclient gRPC InferResult around a hand-built ModelInferResponse."""
    response = service_pb2.ModelInferResponse(model_name="diffusion")
    for name, array in outputs.items():
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return grpcclient.InferResult(response)


def image_outputs(step: int, seed: int, side_px: int = IMAGE_SIDE_PX) -> dict[str, np.ndarray]:
    image = np.arange(side_px * side_px * 3, dtype=np.uint8).reshape(side_px, side_px, 3)
    return {
        "IMAGE": image,
        "STEP": np.array([step], dtype=np.int32),
        "SEED_USED": np.array([seed], dtype=np.int64),
    }


def progress_outputs(step: int, seed: int) -> dict[str, np.ndarray]:
    return {
        "IMAGE": np.zeros((0, 0, 3), dtype=np.uint8),
        "STEP": np.array([step], dtype=np.int32),
        "SEED_USED": np.array([seed], dtype=np.int64),
    }


# ---------------------------------------------------------------------------------------------
# request -> inputs


def test_only_the_prompt_is_sent_when_nothing_else_is_set() -> None:
    arrays = input_arrays(GenerationRequest(prompt="a red fox"), progress=False)
    assert list(arrays) == ["PROMPT"]
    assert arrays["PROMPT"].dtype == np.object_
    assert arrays["PROMPT"].shape == (1,)
    assert arrays["PROMPT"][0] == b"a red fox"


def test_every_set_field_becomes_a_one_element_input_of_the_contract_dtype() -> None:
    request = GenerationRequest(
        prompt="a red fox", negative_prompt="blurry", num_steps=12, guidance_scale=5.5,
        seed=2**40, height=64, width=96, sampler="euler",
    )
    arrays = input_arrays(request, progress=True)
    expected = {
        "PROMPT": ("BYTES", b"a red fox"),
        "NEGATIVE_PROMPT": ("BYTES", b"blurry"),
        "STEPS": ("INT32", 12),
        "GUIDANCE_SCALE": ("FP32", 5.5),
        "SEED": ("INT64", 2**40),
        "HEIGHT": ("INT32", 64),
        "WIDTH": ("INT32", 96),
        "SAMPLER": ("BYTES", b"euler"),
        "PROGRESS": ("BOOL", True),
    }
    assert set(arrays) == set(expected)
    for name, (datatype, value) in expected.items():
        assert np_to_triton_dtype(arrays[name].dtype) == datatype, name
        assert arrays[name].shape == (1,), name
        assert arrays[name][0] == value, name


def test_unicode_prompt_is_sent_as_utf8() -> None:
    arrays = input_arrays(GenerationRequest(prompt="café 猫"), progress=False)
    assert arrays["PROMPT"][0] == "café 猫".encode()


def test_an_empty_negative_prompt_is_still_sent() -> None:
    arrays = input_arrays(GenerationRequest(prompt="x", negative_prompt=""), progress=False)
    assert arrays["NEGATIVE_PROMPT"][0] == b""


@pytest.mark.parametrize(
    ("request_", "input_name"),
    [
        (GenerationRequest(prompt="x", num_steps=2**31), "STEPS"),
        (GenerationRequest(prompt="x", seed=2**63), "SEED"),
        (GenerationRequest(prompt="x", height=-(2**31) - 1), "HEIGHT"),
    ],
)
def test_integers_that_do_not_fit_are_refused_naming_the_input(
    request_: GenerationRequest, input_name: str
) -> None:
    with pytest.raises(GenerationError) as caught:
        input_arrays(request_, progress=False)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert input_name in caught.value.message


@pytest.mark.parametrize("input_type", [grpcclient.InferInput, httpclient.InferInput])
def test_infer_inputs_carry_names_datatypes_and_shapes(input_type: type) -> None:
    request = GenerationRequest(prompt="p", num_steps=3, seed=7, sampler="ddim")
    inputs = infer_inputs(input_type, request, progress=True)
    described = {i.name(): (i.datatype(), list(i.shape())) for i in inputs}
    assert described == {
        "PROMPT": ("BYTES", [1]),
        "STEPS": ("INT32", [1]),
        "SEED": ("INT64", [1]),
        "SAMPLER": ("BYTES", [1]),
        "PROGRESS": ("BOOL", [1]),
    }


# ---------------------------------------------------------------------------------------------
# response decoding


def test_decode_a_progress_response_has_no_image() -> None:
    decoded = decode_result(grpc_result(progress_outputs(3, 42)), final=False)
    assert decoded.image is None
    assert (decoded.step, decoded.seed, decoded.final) == (3, 42, False)


def test_decode_a_final_response() -> None:
    decoded = decode_result(grpc_result(image_outputs(20, 42)), final=True)
    assert decoded.image is not None
    assert decoded.image.shape == (IMAGE_SIDE_PX, IMAGE_SIDE_PX, 3)
    assert decoded.image.dtype == np.uint8
    assert (decoded.step, decoded.seed) == (20, 42)


def test_decode_refuses_an_image_of_the_wrong_layout() -> None:
    outputs = image_outputs(20, 42)
    outputs["IMAGE"] = np.zeros((3, 4, 4), dtype=np.uint8)
    with pytest.raises(GenerationError) as caught:
        decode_result(grpc_result(outputs), final=True)
    assert caught.value.code == "INTERNAL"


# ---------------------------------------------------------------------------------------------
# stream callback


@dataclass
class ProgressLog:
    calls: list[tuple[int, int | None]] = field(default_factory=list)

    def __call__(self, steps_done: int, total_steps: int | None) -> None:
        self.calls.append((steps_done, total_steps))


def test_progress_then_final_yields_the_image_and_reports_each_step() -> None:
    log = ProgressLog()
    collector = StreamCollector(log, total_steps=3)
    for step in (1, 2, 3):
        collector(result=grpc_result(progress_outputs(step, 42), final=False), error=None)
        assert not collector.done
    collector(result=grpc_result(image_outputs(3, 42), final=True), error=None)
    assert collector.done
    image, steps, seed = collector.outcome()
    assert image.shape == (IMAGE_SIDE_PX, IMAGE_SIDE_PX, 3)
    assert (steps, seed) == (3, 42)
    assert log.calls == [(1, 3), (2, 3), (3, 3)]
    assert collector.finished_at_s is not None


def test_total_is_none_when_the_request_left_steps_to_the_server() -> None:
    log = ProgressLog()
    collector = StreamCollector(log, total_steps=None)
    collector(result=grpc_result(progress_outputs(1, 5), final=False), error=None)
    assert log.calls == [(1, None)]


def test_an_empty_final_response_after_the_image_ends_the_request() -> None:
    collector = StreamCollector(None, total_steps=None)
    collector(result=grpc_result(image_outputs(20, 9), final=False), error=None)
    assert not collector.done
    collector(result=grpc_result({}, final=True), error=None)
    assert collector.done
    assert collector.outcome()[1:] == (20, 9)


def test_without_the_final_flag_the_image_response_ends_the_request() -> None:
    collector = StreamCollector(None, total_steps=None)
    collector(result=grpc_result(image_outputs(20, 9), final=None), error=None)
    assert collector.done
    assert collector.outcome()[2] == 9


def test_a_final_response_without_an_image_is_an_internal_error() -> None:
    collector = StreamCollector(None, total_steps=None)
    collector(result=grpc_result({}, final=True), error=None)
    with pytest.raises(GenerationError) as caught:
        collector.outcome()
    assert caught.value.code == "INTERNAL"


def test_a_stream_error_with_a_grpc_status_keeps_the_servers_message() -> None:
    collector = StreamCollector(None, total_steps=None)
    error = InferenceServerException(
        msg="STEPS must be in [1, 1000], got 0", status="StatusCode.INVALID_ARGUMENT"
    )
    collector(result=None, error=error)
    with pytest.raises(GenerationError) as caught:
        collector.outcome()
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == "STEPS must be in [1, 1000], got 0"


def test_callbacks_after_the_terminal_event_are_ignored() -> None:
    collector = StreamCollector(None, total_steps=None)
    collector(result=grpc_result(image_outputs(4, 1), final=True), error=None)
    cancelled = InferenceServerException(msg="Locally cancelled", status="StatusCode.CANCELLED")
    collector(result=None, error=cancelled)
    assert collector.outcome()[1:] == (4, 1)


def test_an_error_after_progress_wins_over_the_missing_image() -> None:
    log = ProgressLog()
    collector = StreamCollector(log, total_steps=10)
    collector(result=grpc_result(progress_outputs(1, 3), final=False), error=None)
    collector(result=None, error=InferenceServerException(msg="x", status="StatusCode.CANCELLED"))
    with pytest.raises(GenerationError) as caught:
        collector.outcome()
    assert caught.value.code == "CANCELLED"


def test_a_failing_progress_callback_ends_the_request_with_its_exception() -> None:
    def explode(steps_done: int, total_steps: int | None) -> None:
        raise ZeroDivisionError("callback bug")

    collector = StreamCollector(explode, total_steps=2)
    collector(result=grpc_result(progress_outputs(1, 3), final=False), error=None)
    assert collector.done
    with pytest.raises(ZeroDivisionError):
        collector.outcome()


# ---------------------------------------------------------------------------------------------
# error mapping


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        ("StatusCode.INVALID_ARGUMENT", "HEIGHT must be a multiple of 8", "INVALID_ARGUMENT"),
        ("StatusCode.UNAVAILABLE", "queue full", "UNAVAILABLE"),
        ("StatusCode.RESOURCE_EXHAUSTED", "too many requests", "UNAVAILABLE"),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", "CANCELLED"),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", "DEADLINE_EXCEEDED"),
        ("StatusCode.NOT_FOUND", "unknown model", "NOT_FOUND"),
        ("StatusCode.INTERNAL", "onnxruntime failed", "INTERNAL"),
        ("StatusCode.UNKNOWN", "boom", "INTERNAL"),
        ("400", "SAMPLER must be ddim or euler, got 'plms'", "INVALID_ARGUMENT"),
        ("400", "Request was cancelled", "CANCELLED"),
        ("499", "client closed request", "CANCELLED"),
        ("503", "Exceeds maximum queue size", "UNAVAILABLE"),
        ("404", "Request for unknown model", "NOT_FOUND"),
        ("500", "onnxruntime failed", "INTERNAL"),
        (None, "request was cancelled", "CANCELLED"),
        (None, "Exceeds maximum queue size", "UNAVAILABLE"),
        (None, "invalid value for GUIDANCE_SCALE", "INVALID_ARGUMENT"),
        (None, "segfault in unet", "INTERNAL"),
    ],
)
def test_error_codes(status: str | None, message: str, code: str) -> None:
    error = error_from_exception(InferenceServerException(msg=message, status=status))
    assert error.code == code
    assert error.message == message


def test_generation_error_prints_code_and_message_and_pickles() -> None:
    import pickle

    error = GenerationError("INVALID_ARGUMENT", "WIDTH must be positive")
    assert str(error) == "INVALID_ARGUMENT: WIDTH must be positive"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message) == (error.code, error.message)


# ---------------------------------------------------------------------------------------------
# PNG


def test_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    path = tmp_path / "0-42.png"
    save_png(image, path)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        assert loaded.mode == "RGB"
        assert np.array_equal(np.asarray(loaded), image)
    assert [p.name for p in tmp_path.iterdir()] == ["0-42.png"]  # no partial file left


def test_png_of_a_read_only_image(tmp_path: Path) -> None:
    image = np.frombuffer(bytes(range(48)), dtype=np.uint8).reshape(4, 4, 3)
    save_png(image, tmp_path / "ro.png")
    with Image.open(tmp_path / "ro.png") as loaded:
        assert np.array_equal(np.asarray(loaded), image)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4), dtype=np.uint8)]
)
def test_png_refuses_other_layouts(tmp_path: Path, image: np.ndarray) -> None:
    with pytest.raises(ValueError):
        save_png(image, tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------
# CLI parsing and naming


def parse_generate(*argv: str) -> argparse.Namespace:
    parser, module = cli.build_parser(["generate", *argv])
    assert module is generate_cli
    return parser.parse_args(["generate", *argv])


def test_generate_defaults() -> None:
    args = parse_generate("a fox")
    assert args.prompts == ["a fox"]
    assert args.protocol == "grpc"
    assert args.url is None and args.model is None
    assert args.out == Path(".")
    assert (args.concurrency, args.repeat, args.no_progress) == (1, 1, False)
    jobs = generate_cli.build_jobs(args)
    assert [job.request for job in jobs] == [GenerationRequest(prompt="a fox")]


def test_generate_options_reach_the_request() -> None:
    args = parse_generate(
        "--prompt", "a fox", "--negative-prompt", "blur", "--steps", "8", "--guidance", "3.5",
        "--seed", "100", "--height", "64", "--width", "32", "--sampler", "euler",
        "--protocol", "http", "--url", "host:9000", "--model", "m", "--out", "imgs",
        "--concurrency", "4", "--timeout-s", "30", "--no-progress",
    )
    assert generate_cli.build_jobs(args)[0].request == GenerationRequest(
        prompt="a fox", negative_prompt="blur", num_steps=8, guidance_scale=3.5, seed=100,
        height=64, width=32, sampler="euler",
    )
    assert (args.protocol, args.url, args.model) == ("http", "host:9000", "m")
    assert args.out == Path("imgs")
    assert (args.concurrency, args.timeout_s, args.no_progress) == (4, 30.0, True)


def test_several_prompts_and_repeats_are_numbered_prompt_major_with_consecutive_seeds() -> None:
    args = parse_generate("first", "--prompt", "second", "--repeat", "2", "--seed", "10")
    jobs = generate_cli.build_jobs(args)
    assert [(j.index, j.request.prompt, j.request.seed) for j in jobs] == [
        (0, "first", 10), (1, "first", 11), (2, "second", 12), (3, "second", 13),
    ]


def test_random_seeds_stay_unset() -> None:
    jobs = generate_cli.build_jobs(parse_generate("a", "b"))
    assert [job.request.seed for job in jobs] == [None, None]


@pytest.mark.parametrize(
    "argv",
    [("x", "--sampler", "plms"), ("x", "--concurrency", "0"), ("x", "--repeat", "-1"),
     ("x", "--steps", "many"), ("x", "--protocol", "udp"), ("x", "--timeout-s", "0")],
)
def test_bad_generate_arguments_are_usage_errors(argv: tuple[str, ...], capsys) -> None:
    assert cli.main(["generate", *argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_generate_without_a_prompt_is_a_usage_error(capsys) -> None:
    assert cli.main(["generate"]) == 2
    assert "at least one prompt" in capsys.readouterr().err


def test_output_naming_and_result_line() -> None:
    path = generate_cli.output_path(Path("out"), 3, 123456)
    assert path == Path("out/3-123456.png")
    image = GeneratedImage(np.zeros((64, 32, 3), dtype=np.uint8), seed=123456, num_steps=20,
                           latency_s=1.234)
    line = generate_cli.result_line(path, image)
    assert line == "out/3-123456.png  32x64  seed=123456  latency=1.23s"


def test_top_level_help_imports_no_subcommand(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for subcommand in cli.SUBCOMMANDS:
        assert subcommand.name in out


def test_a_subcommand_whose_module_is_missing_gives_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        cli, "SUBCOMMANDS",
        (cli.Subcommand("ghost", "not written yet", "client.no_such_module_yet"),),
    )
    assert cli.main(["ghost", "--flag"]) == 2
    err = capsys.readouterr().err
    assert "'ghost' is not available" in err
    assert "client.no_such_module_yet" in err
    assert "Traceback" not in err


def test_a_subcommand_module_without_run_gives_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        cli, "SUBCOMMANDS", (cli.Subcommand("half", "half written", "client.contract"),)
    )
    assert cli.main(["half"]) == 2
    assert "lacks add_arguments, run" in capsys.readouterr().err


def test_client_refuses_a_url_with_a_scheme_and_unknown_protocols() -> None:
    with pytest.raises(ValueError):
        DiffusionClient("http://127.0.0.1:8000", "http")
    with pytest.raises(ValueError):
        DiffusionClient("127.0.0.1:8000", "udp")  # type: ignore[arg-type]
    assert DiffusionClient("h:1").model == "diffusion"
    assert DiffusionClient("h:1", "http").model == "txt2img_unary"


def test_generate_refuses_an_already_cancelled_request_without_connecting() -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationError) as caught:
        DiffusionClient("127.0.0.1:1").generate(GenerationRequest(prompt="x"), cancel=cancel)
    assert caught.value.code == "CANCELLED"


# ---------------------------------------------------------------------------------------------
# in-process fake of Triton's gRPC stream


def decode_inputs(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    arrays = {}
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        if tensor.datatype == "BYTES":
            arrays[tensor.name] = deserialize_bytes_tensor(raw)
        else:
            arrays[tensor.name] = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
    return arrays


def stream_response(
    outputs: dict[str, np.ndarray], final: bool
) -> service_pb2.ModelStreamInferResponse:
    infer_response = grpc_result(outputs, final=final).get_response()
    return service_pb2.ModelStreamInferResponse(infer_response=infer_response)


class FakeTritonStream(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Behaviour by prompt: "slow" steps until cancelled, "invalid" fails with a gRPC status (as
    with the triton_grpc_error header), "inband" fails in-band; anything else succeeds."""

    SLOW_STEP_S = 0.02
    SLOW_MAX_STEPS = 500  # ~10 s: a test that fails to cancel still ends

    def __init__(self) -> None:
        self.requests: list[dict[str, np.ndarray]] = []
        self.headers: list[dict[str, str]] = []
        self.cancelled = 0
        self.slow_started = threading.Semaphore(0)
        self._lock = threading.Lock()

    def _count_cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def ModelStreamInfer(self, request_iterator, context) -> Iterator:  # noqa: N802 - the gRPC method's name
        with self._lock:
            self.headers.append(dict(context.invocation_metadata()))
        for request in request_iterator:
            inputs = decode_inputs(request)
            with self._lock:
                self.requests.append(inputs)
            prompt = inputs["PROMPT"][0].decode("utf-8")
            seed = int(inputs["SEED"][0]) if "SEED" in inputs else 777
            steps = int(inputs["STEPS"][0]) if "STEPS" in inputs else 20
            progress = bool(inputs["PROGRESS"][0]) if "PROGRESS" in inputs else False
            if prompt == "invalid":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "STEPS must be >= 1, got 0")
            if prompt == "inband":
                yield service_pb2.ModelStreamInferResponse(
                    error_message="GUIDANCE_SCALE is invalid"
                )
                continue
            if prompt == "slow":
                # gRPC stops pulling this generator when the client cancels; the termination
                # callback is how the server side learns of it, as Triton does.
                context.add_callback(self._count_cancel)
                self.slow_started.release()
                for step in range(1, self.SLOW_MAX_STEPS):
                    time.sleep(self.SLOW_STEP_S)
                    yield stream_response(progress_outputs(step, seed), final=False)
                return
            if progress:
                for step in range(1, steps + 1):
                    yield stream_response(progress_outputs(step, seed), final=False)
            # The model sends the image, then a flags-only final (enable_empty_final_response).
            yield stream_response(image_outputs(steps, seed), final=False)
            yield stream_response({}, final=True)


@pytest.fixture
def fake_grpc() -> Iterator[tuple[FakeTritonStream, str]]:
    servicer = FakeTritonStream()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_grpc_generate_streams_progress_and_returns_the_image(fake_grpc) -> None:
    servicer, url = fake_grpc
    log = ProgressLog()
    result = DiffusionClient(url).generate(
        GenerationRequest(prompt="a fox", num_steps=4, seed=5), on_progress=log
    )
    assert result.image.shape == (IMAGE_SIDE_PX, IMAGE_SIDE_PX, 3)
    assert (result.seed, result.num_steps) == (5, 4)
    assert result.latency_s > 0
    assert log.calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    (sent,) = servicer.requests
    assert set(sent) == {"PROMPT", "STEPS", "SEED", "PROGRESS"}
    assert "triton_grpc_error" not in servicer.headers[0]  # it can crash Triton 2.51 (client/api.py)


def test_grpc_generate_without_progress_sends_no_progress_input(fake_grpc) -> None:
    servicer, url = fake_grpc
    result = DiffusionClient(url).generate(GenerationRequest(prompt="a fox"))
    assert result.seed == 777 and result.num_steps == 20
    assert set(servicer.requests[0]) == {"PROMPT"}


def test_grpc_unary_model_is_never_asked_for_progress(fake_grpc) -> None:
    servicer, url = fake_grpc
    log = ProgressLog()
    DiffusionClient(url, model="txt2img_unary").generate(GenerationRequest(prompt="x"), log)
    assert "PROGRESS" not in servicer.requests[0]
    assert log.calls == []


def test_grpc_status_error_keeps_code_and_message(fake_grpc) -> None:
    _, url = fake_grpc
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(url).generate(GenerationRequest(prompt="invalid"))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == "STEPS must be >= 1, got 0"


def test_grpc_inband_error_is_reported(fake_grpc) -> None:
    _, url = fake_grpc
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(url).generate(GenerationRequest(prompt="inband"))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == "GUIDANCE_SCALE is invalid"


def test_grpc_cancel_stops_the_server_side_request(fake_grpc) -> None:
    servicer, url = fake_grpc
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started_s = time.perf_counter()
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(url).generate(GenerationRequest(prompt="slow"), ProgressLog(), cancel)
    assert caught.value.code == "CANCELLED"
    assert time.perf_counter() - started_s < 3.0
    deadline_s = time.perf_counter() + 3.0
    while servicer.cancelled == 0 and time.perf_counter() < deadline_s:
        time.sleep(0.02)
    assert servicer.cancelled == 1


def test_grpc_timeout_is_deadline_exceeded(fake_grpc) -> None:
    _, url = fake_grpc
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(url).generate(GenerationRequest(prompt="slow"), timeout_s=0.3)
    assert caught.value.code == "DEADLINE_EXCEEDED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_grpc_without_a_server_is_unavailable() -> None:
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(f"127.0.0.1:{free_port()}").generate(
            GenerationRequest(prompt="x"), timeout_s=5.0
        )
    assert caught.value.code == "UNAVAILABLE"


# ---------------------------------------------------------------------------------------------
# in-process fake of Triton's HTTP infer endpoint (binary tensor extension)


class FakeTritonHttp(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, np.ndarray]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, header_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if header_length is not None:
            self.send_header("Inference-Header-Content-Length", str(header_length))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        json_size = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        header = json.loads(body[:json_size])
        offset = json_size
        inputs = {}
        for tensor in header["inputs"]:
            size = tensor["parameters"]["binary_data_size"]
            raw = body[offset:offset + size]
            offset += size
            if tensor["datatype"] == "BYTES":
                inputs[tensor["name"]] = deserialize_bytes_tensor(raw)
            else:
                inputs[tensor["name"]] = np.frombuffer(
                    raw, dtype=triton_to_np_dtype(tensor["datatype"])
                )
        type(self).requests.append(inputs)
        if not self.path.endswith("/models/txt2img_unary/infer"):
            self._reply(400, json.dumps({"error": "decoupled models need streaming"}).encode())
            return
        if inputs["PROMPT"][0] == b"invalid":
            error = {"error": "HEIGHT must be a multiple of 8, got 30"}
            self._reply(400, json.dumps(error).encode())
            return
        outputs = image_outputs(int(inputs["STEPS"][0]) if "STEPS" in inputs else 20, 31337)
        described = [
            {"name": name, "datatype": np_to_triton_dtype(a.dtype), "shape": list(a.shape),
             "parameters": {"binary_data_size": a.nbytes}}
            for name, a in outputs.items()
        ]
        response_json = json.dumps({"model_name": "txt2img_unary", "outputs": described}).encode()
        payload = response_json + b"".join(a.tobytes() for a in outputs.values())
        self._reply(200, payload, header_length=len(response_json))


@pytest.fixture
def fake_http() -> Iterator[str]:
    FakeTritonHttp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTritonHttp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_generate_returns_the_image(fake_http: str) -> None:
    result = DiffusionClient(fake_http, "http").generate(
        GenerationRequest(prompt="a fox", num_steps=6, height=8)
    )
    assert result.image.shape == (IMAGE_SIDE_PX, IMAGE_SIDE_PX, 3)
    assert (result.seed, result.num_steps) == (31337, 6)
    (sent,) = FakeTritonHttp.requests
    assert set(sent) == {"PROMPT", "STEPS", "HEIGHT"}  # never PROGRESS over HTTP


def test_http_error_keeps_the_servers_message(fake_http: str) -> None:
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(fake_http, "http").generate(GenerationRequest(prompt="invalid"))
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == "HEIGHT must be a multiple of 8, got 30"


def test_http_requests_from_several_threads(fake_http: str) -> None:
    client = DiffusionClient(fake_http, "http")
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(
            lambda i: client.generate(GenerationRequest(prompt=f"p{i}", num_steps=i + 1)), range(8)
        ))
    assert [r.num_steps for r in results] == list(range(1, 9))


def test_http_without_a_server_is_unavailable() -> None:
    with pytest.raises(GenerationError) as caught:
        DiffusionClient(f"127.0.0.1:{free_port()}", "http").generate(GenerationRequest(prompt="x"))
    assert caught.value.code == "UNAVAILABLE"


# ---------------------------------------------------------------------------------------------
# `synerdiff generate` end to end against the fakes


def test_cli_writes_one_png_per_request_and_prints_a_line_each(fake_grpc, tmp_path, capsys) -> None:
    _, url = fake_grpc
    code = cli.main([
        "generate", "a fox", "--prompt", "a cat", "--repeat", "2", "--seed", "40", "--steps", "3",
        "--concurrency", "3", "--url", url, "--out", str(tmp_path / "imgs"),
    ])
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert names == ["0-40.png", "1-41.png", "2-42.png", "3-43.png"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all(f"{IMAGE_SIDE_PX}x{IMAGE_SIDE_PX}" in line and "latency=" in line for line in lines)


def test_cli_per_request_progress_bar_path(fake_grpc, tmp_path) -> None:
    _, url = fake_grpc
    assert cli.main(["generate", "x", "--steps", "5", "--url", url, "--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["0-777.png"]


def test_cli_over_http(fake_http: str, tmp_path) -> None:
    code = cli.main(
        ["generate", "x", "--protocol", "http", "--url", fake_http, "--out", str(tmp_path)]
    )
    assert code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["0-31337.png"]


def test_cli_reports_the_servers_message_without_a_traceback(fake_grpc, tmp_path, capsys) -> None:
    _, url = fake_grpc
    code = cli.main(["generate", "fine", "invalid", "--url", url, "--out", str(tmp_path)])
    assert code == 1
    captured = capsys.readouterr()
    assert "STEPS must be >= 1, got 0" in captured.err
    assert "Traceback" not in captured.err
    assert len(captured.out.splitlines()) == 1  # the good request still produced its image


def test_cli_ctrl_c_cancels_in_flight_requests_and_exits_130(fake_grpc, tmp_path, capsys) -> None:
    servicer, url = fake_grpc

    def interrupt_once_both_run() -> None:
        for _ in range(2):
            assert servicer.slow_started.acquire(timeout=5.0)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_both_run, daemon=True).start()
    code = cli.main([
        "generate", "slow", "slow", "slow", "--concurrency", "2", "--url", url,
        "--out", str(tmp_path),
    ])
    assert code == 130
    assert "cancelled 3 request(s)" in capsys.readouterr().err
    deadline_s = time.perf_counter() + 3.0
    while servicer.cancelled < 2 and time.perf_counter() < deadline_s:
        time.sleep(0.02)
    assert servicer.cancelled == 2  # the third was never sent
    assert len(servicer.requests) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("message", "code"), [
    ("the waiting queue is full (64 requests); retry later", "UNAVAILABLE"),
    ("the server is shutting down; retry later", "UNAVAILABLE"),
    ("waited 1.2 s, longer than its queue timeout; retry later", "UNAVAILABLE"),
    ("request cancelled: stopped by its request id", "CANCELLED"),
    ("PROMPT: is required", "INVALID_ARGUMENT"),
    ("parameters.colour: is not a known request parameter (known: queue_timeout_ms)", "INVALID_ARGUMENT"),
    ("in ensemble 'txt2img', STEPS: must be in [1, 150], got 0", "INVALID_ARGUMENT"),
    ("unexpected inference input 'FOO' for model 'diffusion'", "INVALID_ARGUMENT"),
    ("unet failed: Stub process 'unet_0_0' is not healthy.", "INTERNAL"),
])
def test_an_in_band_stream_error_gets_its_code_from_the_servers_wording(message: str, code: str) -> None:
    assert error_from_exception(InferenceServerException(msg=message)).code == code
