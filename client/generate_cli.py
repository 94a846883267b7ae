"""`synerdiff generate`: text prompts in, PNG files out.

Job: expand prompts x repeats into numbered requests, send up to --concurrency of them at once from
worker threads, show progress, write `<index>-<seed>.png` into --out and print one line per image.

Invariants:
- request i (0-based, prompt-major: every repeat of prompt 0 first) with --seed S uses seed S + i,
  so repeats differ yet a rerun reproduces every file;
- Ctrl-C sets the cancel event of every request, waits for the in-flight ones to finish cancelling
  (so the server stops their work) and exits 130; images completed meanwhile are still written;
- exit code 0 when every image was written, 1 when any failed; failures print the server's
  message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from client.api import DiffusionClient, save_png
from client.contract import MODELS_WITHOUT_PROGRESS, SAMPLERS, GeneratedImage, GenerationRequest
from client.errors import GenerationError
from client.stream import ProgressCallback

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
MAIN_POLL_S = 0.2  # the main thread wakes this often so Ctrl-C is handled promptly
PROMPT_LABEL_CHARS = 32


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompt(s)")
    parser.add_argument(
        "--prompt", action="append", default=[], dest="prompt_options", metavar="TEXT",
        help="a text prompt; repeatable, added after the positional ones",
    )
    parser.add_argument("--negative-prompt", metavar="TEXT", help="what the image should not show")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="denoising steps (server default 20)")
    parser.add_argument("--guidance", type=float, metavar="SCALE",
                        help="classifier-free guidance scale (server default 7.5; "
                             "<= 1 disables it)")
    parser.add_argument("--seed", type=int,
                        help="seed of request 0; request i uses SEED + i (default: random)")
    parser.add_argument("--height", type=int, metavar="PX", help="image height in pixels")
    parser.add_argument("--width", type=int, metavar="PX", help="image width in pixels")
    parser.add_argument("--sampler", choices=SAMPLERS, help="sampler (server default ddim)")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_URLS), default="grpc",
                        help="grpc streams progress and can cancel; http is unary (default grpc)")
    parser.add_argument("--url", help="host:port (default 127.0.0.1:8001 for grpc, :8000 for http)")
    parser.add_argument("--model",
                        help="model name (default diffusion for grpc, txt2img_unary for http)")
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="output directory for <index>-<seed>.png (default .)")
    parser.add_argument("--concurrency", type=_positive_int, default=1, metavar="N",
                        help="requests in flight at once (default 1)")
    parser.add_argument("--repeat", type=_positive_int, default=1, metavar="M",
                        help="send each prompt M times (default 1)")
    parser.add_argument("--timeout-s", type=_positive_float, metavar="S",
                        help="give up on a request after S seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass(frozen=True)
class Job:
    """One numbered request of this run."""

    index: int
    request: GenerationRequest


def build_jobs(args: argparse.Namespace) -> list[Job]:
    prompts = [*args.prompts, *args.prompt_options]
    jobs = []
    for prompt in prompts:
        for _ in range(args.repeat):
            index = len(jobs)
            jobs.append(Job(index, GenerationRequest(
                prompt=prompt,
                negative_prompt=args.negative_prompt,
                num_steps=args.steps,
                guidance_scale=args.guidance,
                seed=None if args.seed is None else args.seed + index,
                height=args.height,
                width=args.width,
                sampler=args.sampler,
            )))
    return jobs


def output_path(out_dir: Path, index: int, seed: int) -> Path:
    return out_dir / f"{index}-{seed}.png"


def result_line(path: Path, image: GeneratedImage) -> str:
    height, width = image.image.shape[:2]
    return f"{path}  {width}x{height}  seed={image.seed}  latency={image.latency_s:.2f}s"


class ProgressBars:
    """tqdm bars fed by progress responses: one per request with concurrency 1, otherwise one bar
    of denoising steps over all requests. Callbacks arrive on stream threads, hence the lock."""

    def __init__(self, enabled: bool, per_request: bool, jobs: list[Job]) -> None:
        self._enabled = enabled
        self._lock = threading.Lock()
        self._bars: dict[int, tqdm] = {}
        self._steps_seen: dict[int, int] = {}
        self._overall: tqdm | None = None
        if enabled and not per_request:
            steps = [job.request.num_steps for job in jobs]
            total = None if None in steps else sum(s for s in steps if s is not None)
            self._overall = tqdm(total=total, unit="step", desc=f"{len(jobs)} images",
                                 dynamic_ncols=True)

    def tracker(self, job: Job) -> ProgressCallback | None:
        if not self._enabled:
            return None

        def on_progress(steps_done: int, total_steps: int | None) -> None:
            with self._lock:
                delta = steps_done - self._steps_seen.get(job.index, 0)
                self._steps_seen[job.index] = steps_done
                if self._overall is not None:
                    self._overall.update(delta)
                    return
                bar = self._bars.get(job.index)
                if bar is None:
                    label = job.request.prompt[:PROMPT_LABEL_CHARS]
                    bar = tqdm(total=total_steps, unit="step", desc=f"[{job.index}] {label}",
                               leave=False, dynamic_ncols=True)
                    self._bars[job.index] = bar
                bar.update(delta)

        return on_progress

    def finish(self, job: Job) -> None:
        with self._lock:
            bar = self._bars.pop(job.index, None)
            if bar is not None:
                bar.close()

    def write(self, line: str, error: bool = False) -> None:
        # tqdm.write keeps lines from being torn by a bar being redrawn.
        with self._lock:
            tqdm.write(line, file=sys.stderr if error else sys.stdout)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            if self._overall is not None:
                self._overall.close()


def _run_job(
    client: DiffusionClient, job: Job, cancel: threading.Event, bars: ProgressBars,
    timeout_s: float | None,
) -> GeneratedImage:
    try:
        return client.generate(job.request, bars.tracker(job), cancel, timeout_s)
    finally:
        bars.finish(job)


def run(args: argparse.Namespace) -> int:
    jobs = build_jobs(args)
    if not jobs:
        print("synerdiff generate: error: give at least one prompt", file=sys.stderr)
        return EXIT_USAGE
    url = args.url or DEFAULT_URLS[args.protocol]
    try:
        client = DiffusionClient(url, args.protocol, args.model)
    except ValueError as exc:
        print(f"synerdiff generate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"synerdiff generate: error: cannot create {args.out}: {exc}", file=sys.stderr)
        return EXIT_FAILED

    concurrency = min(args.concurrency, len(jobs))
    show_progress = (not args.no_progress and args.protocol == "grpc"
                     and client.model not in MODELS_WITHOUT_PROGRESS)
    bars = ProgressBars(show_progress, per_request=concurrency == 1, jobs=jobs)
    cancels = {job.index: threading.Event() for job in jobs}
    failed = 0
    cancelled = 0
    interrupted = False

    def settle(job: Job, future: Future[GeneratedImage]) -> None:
        nonlocal failed, cancelled
        if future.cancelled():
            cancelled += 1  # never started: Ctrl-C came first
            return
        try:
            image = future.result()
            path = output_path(args.out, job.index, image.seed)
            save_png(image.image, path)
        except GenerationError as exc:
            if exc.code == "CANCELLED" and interrupted:
                cancelled += 1
                return
            failed += 1
            bars.write(f"error: request {job.index} ({job.request.prompt!r}): {exc}", error=True)
            return
        except OSError as exc:
            failed += 1
            bars.write(f"error: request {job.index}: cannot write the image: {exc}", error=True)
            return
        bars.write(result_line(path, image))

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        bars.write("interrupted: cancelling the requests in flight...", error=True)
        for future in pending:
            future.cancel()  # those not started yet never will; wait() reports them done
        for event in cancels.values():
            event.set()

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="synerdiff-generate")
    pending = {
        pool.submit(_run_job, client, job, cancels[job.index], bars, args.timeout_s): job
        for job in jobs
    }
    abandoned = False
    try:
        while pending:
            try:
                done, _ = wait(pending, timeout=MAIN_POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    settle(pending.pop(future), future)
            except KeyboardInterrupt:
                if interrupted:
                    raise  # a second Ctrl-C: stop waiting for the cancellations
                interrupt()
    except KeyboardInterrupt:
        abandoned = True
        bars.write("interrupted again: not waiting for the cancellations", error=True)
        return EXIT_INTERRUPTED
    finally:
        pool.shutdown(wait=not abandoned, cancel_futures=True)
        bars.close()

    if interrupted:
        print(f"cancelled {cancelled} request(s)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else EXIT_OK
