"""The SynerDiff planner: threshold-aware choice of UNet rows, Skip-CFG rows and VAE chunks per iteration.

Each iteration (docs/design.md §4 has the full formulation and the reasons):
1. the controller turns the smoothed waiting-queue length into the throughput threshold θ, and the
   profile turns θ into the batch threshold B(θ): the smallest batch whose rows/s reach θ x peak;
2. candidates, oldest first: denoising requests (in admission order), then admissible waiting ones, all
   of the head's latent shape; a plan steps a prefix of them (n requests);
3. Skip-CFG: of the eligible requests in that prefix, `skip_allowance(eligible, load pressure)` skip;
4. VAE: a plan runs the first m pending chunks (FIFO over jobs, in order within a job), the first k of
   them beside the UNet and the rest after it;
5. choose (n, m, k) minimising the estimated sum of end-to-end latencies of every request in the system
   (this iteration's duration x requests still unfinished after it + finish times of the decodes it
   completes + a first-come-first-served continuation of the work left), subject to the throughput
   constraint when enough work waits (available rows >= B(θ)): n's rows reach B(θ), and the UNet work
   done keeps pace with θ x peak, counted with a credit of at most one threshold step so VAE chunks can
   use the slack that batches above the threshold and skipped rows leave.

The table over (n, m, k) is filled with prefix-sum recurrences over the chunk queue (chunk finish times,
decodes completed, work removed from the continuation), so one decision costs O(n_options x M x 3).
`search="greedy"` is the ablation: the threshold batch, then chunks beside it while the UNet slowdown
stays within 1/θ, nothing after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Sequence

from scheduler_backend.controller import ThresholdController
from scheduler_backend.planner import RequestView, SchedulerView, StepPlan, UnetCall, VaeCall, VaeJobView
from scheduler_backend.profile import Contention, LatencyProfile, overlap
from scheduler_backend.skip_cfg import skip_allowance

SEARCHES = ("dp", "greedy")


@dataclass(frozen=True)
class SynerDiffOptions:
    skip_cfg: bool = True
    search: str = "dp"
    max_chunks_per_iteration: int = 16

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; choose one of {', '.join(SEARCHES)}")


@dataclass(frozen=True)
class _Chunk:
    job: int  # index into the view's vae_jobs
    seconds: float
    is_last: bool  # completes its job's decode


@dataclass(frozen=True)
class _Rows:
    """Stepping the first `count` candidates."""

    count: int
    rows: int  # UNet rows after skips
    work_rows: int  # rows of work done (a skipped row still completes its request's step)
    skip_ids: tuple[str, ...]


@dataclass
class _Choice:
    cost: float
    rows: _Rows | None
    chunks: int
    beside: int
    seconds: float


@dataclass
class SynerDiffPlanner:
    profile: LatencyProfile
    controller: ThresholdController
    max_running_requests: int
    options: SynerDiffOptions = field(default_factory=SynerDiffOptions)
    _credit_s: float = 0.0

    def plan(self, view: SchedulerView) -> StepPlan:
        threshold = self.controller.update(len(view.waiting))
        target_rows = self.profile.threshold_rows(threshold)
        admissible = list(view.waiting[:max(0, self.max_running_requests - view.running)])
        candidates = _same_shape_prefix(list(view.denoising) + admissible)
        area = self.profile.area_ratio(candidates[0].latent_shape[1:]) if candidates else 1.0
        options = self._row_options(candidates, target_rows)
        constrained = bool(options) and options[-1].rows >= target_rows
        chunks = self._chunk_queue(view.vae_jobs)
        unit_s = self.profile.unet_call_seconds(target_rows) / target_rows  # seconds per row at the threshold batch
        contention = self._contention(view)
        pace = self._unet_pace(view, threshold, unit_s)
        if self.options.search == "greedy":
            choice = self._greedy(options[:1], chunks, threshold, area, contention)
        else:
            alone_cap_s = max(self.profile.unet_call_seconds(target_rows, area), chunks[0].seconds) if chunks else 0.0
            choice = self._search(view, candidates, options, chunks, pace, area, unit_s, constrained, contention,
                                  alone_cap_s)
        if choice.rows is not None and constrained:
            deserved_s = choice.rows.work_rows * area / (pace * self.profile.peak_rows_per_second)
            # The credit may save up one threshold step, or the head chunk when that is longer, so even a
            # chunk longer than the UNet step eventually runs beside or after it.
            cap_s = max(self.profile.unet_call_seconds(target_rows, area), chunks[0].seconds if chunks else 0.0)
            self._credit_s = min(cap_s, self._credit_s + deserved_s - choice.seconds)
        else:
            self._credit_s = max(self._credit_s, 0.0)
        return self._to_plan(view, candidates, choice, chunks, threshold, pace)

    # -- the options --------------------------------------------------------------------------------

    def _row_options(self, candidates: Sequence[RequestView], target_rows: int) -> list[_Rows]:
        """Prefixes from the smallest reaching the batch threshold (or all, with less work) to the
        largest that fits the profiled batch range."""
        options: list[_Rows] = []
        rows = work = 0
        eligible: list[str] = []
        for count, request in enumerate(candidates, start=1):
            if rows + request.unet_rows > self.profile.max_rows and options:
                break
            work += request.unet_rows
            if self.options.skip_cfg and request.can_skip_cfg:
                eligible.append(request.request_id)
            skipped = skip_allowance(len(eligible), self.controller.load_pressure)
            rows = work - skipped
            options.append(_Rows(count, rows, work, tuple(eligible[:skipped])))
        first = next((i for i, option in enumerate(options) if option.rows >= target_rows), len(options) - 1)
        return options[max(first, 0):]

    def _chunk_queue(self, jobs: Sequence[VaeJobView]) -> list[_Chunk]:
        queue: list[_Chunk] = []
        for index, job in enumerate(jobs):
            area = self.profile.area_ratio(job.latent_shape[1:])
            for position, kind in enumerate(job.pending):
                if len(queue) == self.options.max_chunks_per_iteration:
                    return queue
                queue.append(_Chunk(index, self.profile.chunk_seconds(kind, area),
                                    position == len(job.pending) - 1))
        return queue

    def _unet_pace(self, view: SchedulerView, threshold: float, unit_s: float) -> float:
        """The fraction of peak the UNet must keep: θ, but never so much that the decodes of the requests in
        the system cannot keep up (their share of the remaining work, with a 25 % margin)."""
        unet_s = vae_s = 0.0
        for request in (*view.denoising, *view.waiting):
            area = self.profile.area_ratio(request.latent_shape[1:])
            unet_s += (request.num_steps - request.steps_done) * request.unet_rows * unit_s * area
            vae_s += self.profile.decode_seconds(area)
        for job in view.vae_jobs:
            vae_s += sum(self.profile.chunk_seconds(kind, self.profile.area_ratio(job.latent_shape[1:]))
                         for kind in job.pending)
        vae_share = vae_s / (unet_s + vae_s) if vae_s else 0.0
        return max(0.05, min(threshold, 1.0 - 1.25 * vae_share))

    def _contention(self, view: SchedulerView) -> Contention:
        """The worst factors over the chunk kinds a plan may run (a lane can hold several kinds)."""
        return self.profile.worst_contention({kind for job in view.vae_jobs for kind in job.pending})

    # -- the table ----------------------------------------------------------------------------------

    def _search(self, view: SchedulerView, candidates: Sequence[RequestView], options: list[_Rows],
                chunks: list[_Chunk], pace: float, area: float, unit_s: float, constrained: bool,
                contention: Contention, alone_cap_s: float) -> _Choice:
        """Fill the (rows, chunks, beside) table; `pace` is the fraction of peak the UNet must keep when
        `constrained`; with no UNet work, decoding alone stops at `alone_cap_s` (after one chunk at least)."""
        order = [*(job.request_id for job in view.vae_jobs), *(r.request_id for r in view.denoising),
                 *(r.request_id for r in view.waiting)]
        total = len(order)
        weight = {request_id: total - position for position, request_id in enumerate(order)}
        # prefix recurrences over the chunk queue
        done_s = _solo_seconds(chunks)
        removed = [0.0, *accumulate(chunk.seconds * weight[view.vae_jobs[chunk.job].request_id]
                                    for chunk in chunks)]  # continuation work removed by the first i chunks
        peak = self.profile.peak_rows_per_second
        best: _Choice | None = None
        for index, rows in enumerate(options or [None]):  # type: ignore[list-item]
            unet_s = self.profile.unet_call_seconds(rows.rows, area) if rows else 0.0
            stepped_gain = (sum(r.unet_rows * weight[r.request_id] for r in candidates[:rows.count])
                            * unit_s * area) if rows else 0.0
            budget_s = (self._credit_s + rows.work_rows * area / (pace * peak)
                        if rows and constrained else float("inf"))
            decode_cap_s = alone_cap_s if not rows else float("inf")
            fits = _fits_beside(done_s, unet_s, contention)
            for m in range(len(chunks) + 1):
                for beside in sorted({0, min(m, fits), m} if rows else {0}):
                    seconds, finished_s, completed = _iteration(done_s, chunks, m, beside, unet_s, contention)
                    over_budget = seconds > budget_s + 1e-12 and (m > 0 or index > 0)  # the smallest batch
                    if over_budget or seconds > decode_cap_s + 1e-12 and m > 1:  # alone is always allowed
                        continue
                    cost = seconds * (total - completed) + finished_s - removed[m] - stepped_gain
                    if best is None or cost <= best.cost + 1e-9:  # ties go to the plan doing more
                        best = _Choice(cost, rows, m, beside, seconds)
        assert best is not None  # m = 0 is always allowed
        return best

    def _greedy(self, options: list[_Rows], chunks: list[_Chunk], threshold: float, area: float,
                contention: Contention) -> _Choice:
        rows = options[0] if options else None
        unet_s = self.profile.unet_call_seconds(rows.rows, area) if rows else 0.0
        done_s = _solo_seconds(chunks)
        if rows is None:
            cap_s = max(self.profile.unet_call_seconds(self.profile.threshold_rows(threshold), area),
                        chunks[0].seconds if chunks else 0.0)
            m = max((i for i in range(len(chunks) + 1) if done_s[i] <= cap_s + 1e-12), default=0)
            return _Choice(0.0, None, m, 0, done_s[m])
        m = 0
        while m < len(chunks):
            unet_end, _ = overlap(unet_s, done_s[m + 1], contention)
            if unet_end > unet_s / threshold + 1e-12:
                break
            m += 1
        seconds, _, _ = _iteration(done_s, chunks, m, m, unet_s, contention)
        return _Choice(0.0, rows, m, m, seconds)

    # -- the plan -----------------------------------------------------------------------------------

    def _to_plan(self, view: SchedulerView, candidates: Sequence[RequestView], choice: _Choice,
                 chunks: list[_Chunk], threshold: float, pace: float) -> StepPlan:
        stepping = candidates[:choice.rows.count] if choice.rows else []
        waiting_ids = [r.request_id for r in view.waiting]
        stepped_waiting = [waiting_ids.index(r.request_id) for r in stepping if r.request_id in waiting_ids]
        admit = tuple(waiting_ids[:max(stepped_waiting) + 1]) if stepped_waiting else ()
        calls = [VaeCall((view.vae_jobs[chunk.job].request_id,)) for chunk in chunks[:choice.chunks]]
        return StepPlan(
            admit=admit,
            unet_calls=((UnetCall(tuple(r.request_id for r in stepping), choice.rows.skip_ids),)
                        if choice.rows else ()),
            vae_beside=tuple(calls[:choice.beside]),
            vae_after=tuple(calls[choice.beside:]),
            threshold=threshold,
            unet_pace=pace,
            predicted_s=choice.seconds,
        )


def _same_shape_prefix(requests: list[RequestView]) -> list[RequestView]:
    """The oldest request's shape decides who can share its UNet call; the others keep their order."""
    if not requests:
        return []
    shape = requests[0].latent_shape
    return [r for r in requests if r.latent_shape == shape]


def _solo_seconds(chunks: Sequence[_Chunk]) -> list[float]:
    """Solo seconds of the first i chunks, for i = 0 .. len(chunks)."""
    return [0.0, *accumulate(chunk.seconds for chunk in chunks)]


def _fits_beside(done_s: list[float], unet_s: float, contention: Contention) -> int:
    """How many leading chunks end, run beside the UNet, no later than the UNet does."""
    fits = 0
    while fits + 1 < len(done_s) and done_s[fits + 1] * contention.vae_slowdown <= unet_s * contention.unet_slowdown:
        fits += 1
    return fits


def _iteration(done_s: list[float], chunks: list[_Chunk], m: int, beside: int, unet_s: float,
               contention: Contention) -> tuple[float, float, int]:
    """(iteration seconds, sum of the finish times of the decodes it completes, how many it completes)
    for chunks [0, beside) beside the UNet call and [beside, m) after it."""
    unet_end, lane_end = overlap(unet_s, done_s[beside], contention)
    shared_s = min(unet_s * contention.unet_slowdown, done_s[beside] * contention.vae_slowdown) if unet_s else 0.0
    parallel_end = max(unet_end, lane_end)
    finished_s, completed = 0.0, 0
    for i in range(m):
        if not chunks[i].is_last:
            continue
        end = done_s[i + 1]
        if i < beside:
            finish = (end * contention.vae_slowdown if end * contention.vae_slowdown <= shared_s
                      else shared_s + end - shared_s / contention.vae_slowdown) if unet_s else end
        else:
            finish = parallel_end + end - done_s[beside]
        finished_s += finish
        completed += 1
    return parallel_end + done_s[m] - done_s[beside], finished_s, completed
