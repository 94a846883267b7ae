"""scheduler_backend.planner / policies with hand-made SchedulerViews."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend.limits import Limits, ModelSpec
from scheduler_backend.planner import (ContinuousPlanner, RequestView, SchedulerView, SequentialPlanner, StepPlan,
                                       StaticPlanner, UnetCall, VaeCall, VaeJobView, group_by_shape)
from scheduler_backend.policies import POLICIES, make_policy

SMALL = (4, 8, 8)
LARGE = (4, 16, 16)
WIDE = (4, 8, 16)


def req(request_id: str, shape: tuple[int, ...] = SMALL, steps_done: int = 0, num_steps: int = 4,
        rows: int = 2) -> RequestView:
    return RequestView(request_id, shape, rows, steps_done, num_steps)


def view(waiting: tuple[RequestView, ...] = (), denoising: tuple[RequestView, ...] = (),
         decode_ready: tuple[RequestView, ...] = ()) -> SchedulerView:
    jobs = tuple(VaeJobView(r.request_id, r.latent_shape, ("whole",), r.latent_shape) for r in decode_ready)
    return SchedulerView(waiting=waiting, denoising=denoising, vae_jobs=jobs)


def waiting(count: int, shape: tuple[int, ...] = SMALL) -> tuple[RequestView, ...]:
    return tuple(req(f"w{index}", shape) for index in range(count))


# -- continuous --------------------------------------------------------------------------------------


def test_continuous_admits_a_fifo_prefix_up_to_the_free_slots() -> None:
    plan = ContinuousPlanner(3).plan(view(waiting=waiting(5), denoising=(req("d0", steps_done=2),)))
    assert plan.admit == ("w0", "w1")
    assert plan.unet_calls == (UnetCall(("d0", "w0", "w1")),)


def test_continuous_admits_nothing_when_the_running_bound_is_reached_or_exceeded() -> None:
    full = tuple(req(f"d{index}", steps_done=1) for index in range(3))
    for denoising in (full, full + (req("d3"),)):
        plan = ContinuousPlanner(3).plan(view(waiting=waiting(2), denoising=denoising))
        assert plan.admit == ()
        assert plan.unet_calls == (UnetCall(tuple(r.request_id for r in denoising)),)


def test_continuous_admits_everyone_waiting_when_there_is_room() -> None:
    plan = ContinuousPlanner(16).plan(view(waiting=waiting(3)))
    assert plan.admit == ("w0", "w1", "w2")
    assert plan.unet_calls == (UnetCall(("w0", "w1", "w2")),)


def test_continuous_never_overtakes_a_waiting_request_of_another_shape() -> None:
    queue = (req("w0", LARGE), req("w1", SMALL), req("w2", SMALL))
    plan = ContinuousPlanner(2).plan(view(waiting=queue, denoising=(req("d0", SMALL),)))
    assert plan.admit == ("w0",)  # w1 would fit d0's call, but FIFO comes first


def test_continuous_groups_unet_calls_by_latent_shape_in_order_of_first_appearance() -> None:
    denoising = (req("d0", LARGE), req("d1", SMALL), req("d2", LARGE, rows=1), req("d3", WIDE))
    plan = ContinuousPlanner(8).plan(view(waiting=(req("w0", SMALL), req("w1", WIDE)), denoising=denoising))
    assert plan.unet_calls == (UnetCall(("d0", "d2")), UnetCall(("d1", "w0")), UnetCall(("d3", "w1")))


def test_continuous_decodes_only_decode_ready_requests_grouped_by_shape() -> None:
    ready = (req("f0", SMALL, 4, 4), req("f1", LARGE, 3, 3), req("f2", SMALL, 2, 2))
    plan = ContinuousPlanner(4).plan(view(waiting=waiting(1), denoising=(req("d0", steps_done=1),),
                                          decode_ready=ready))
    assert plan.vae_calls == (VaeCall(("f0", "f2")), VaeCall(("f1",)))
    assert all(rid not in call.request_ids for call in plan.unet_calls for rid in ("f0", "f1", "f2"))


def test_continuous_plans_no_vae_call_without_decode_ready_requests() -> None:
    plan = ContinuousPlanner(4).plan(view(waiting=waiting(2), denoising=(req("d0", steps_done=3),)))
    assert plan.vae_calls == ()


def test_continuous_is_idle_on_an_empty_view() -> None:
    plan = ContinuousPlanner(4).plan(view())
    assert plan == StepPlan() and plan.is_idle


def test_a_plan_with_only_a_decode_is_not_idle() -> None:
    assert not ContinuousPlanner(4).plan(view(decode_ready=(req("f0", steps_done=4),))).is_idle


def test_group_by_shape_keeps_fifo_order_within_a_group() -> None:
    requests = (req("a", SMALL), req("b", LARGE), req("c", SMALL), req("d", LARGE))
    assert group_by_shape(requests) == (("a", "c"), ("b", "d"))
    assert group_by_shape(()) == ()


VIEWS = st.builds(
    lambda w, d, f: view(tuple(req(f"w{i}", s) for i, s in enumerate(w)),
                         tuple(req(f"d{i}", s, 1) for i, s in enumerate(d)),
                         tuple(req(f"f{i}", s, 4) for i, s in enumerate(f))),
    *(st.lists(st.sampled_from([SMALL, LARGE, WIDE]), max_size=12) for _ in range(3)))


@settings(max_examples=200, deadline=None)
@given(scheduler_view=VIEWS, max_running=st.integers(1, 8))
def test_continuous_plans_keep_every_invariant(scheduler_view: SchedulerView, max_running: int) -> None:
    plan = ContinuousPlanner(max_running).plan(scheduler_view)
    waiting_ids = tuple(r.request_id for r in scheduler_view.waiting)
    assert plan.admit == waiting_ids[:len(plan.admit)]
    assert scheduler_view.running + len(plan.admit) <= max(max_running, scheduler_view.running)
    if scheduler_view.running + len(plan.admit) < max_running:
        assert plan.admit == waiting_ids  # nobody is kept waiting while a slot is free
    shapes = {r.request_id: r.latent_shape for r in (*scheduler_view.waiting, *scheduler_view.denoising,
                                                     *scheduler_view.vae_jobs)}
    stepped = [rid for call in plan.unet_calls for rid in call.request_ids]
    assert sorted(stepped) == sorted([r.request_id for r in scheduler_view.denoising] + list(plan.admit))
    decoded = [rid for call in plan.vae_calls for rid in call.request_ids]
    assert sorted(decoded) == sorted(r.request_id for r in scheduler_view.vae_jobs)
    for call in (*plan.unet_calls, *plan.vae_calls):
        assert call.request_ids and len({shapes[rid] for rid in call.request_ids}) == 1


# -- sequential --------------------------------------------------------------------------------------


def test_sequential_decodes_first_when_an_image_is_ready() -> None:
    plan = SequentialPlanner().plan(view(waiting=waiting(2), denoising=(req("d0"),),
                                         decode_ready=(req("f0", steps_done=4), req("f1", steps_done=4))))
    assert plan == StepPlan(vae_after=(VaeCall(("f0",)),))


def test_sequential_steps_only_the_first_denoising_request() -> None:
    plan = SequentialPlanner().plan(view(waiting=waiting(2), denoising=(req("d0"), req("d1"))))
    assert plan == StepPlan(unet_calls=(UnetCall(("d0",)),))


def test_sequential_admits_the_head_of_the_queue_and_steps_it_at_once() -> None:
    plan = SequentialPlanner().plan(view(waiting=waiting(3)))
    assert plan == StepPlan(admit=("w0",), unet_calls=(UnetCall(("w0",)),))


def test_sequential_is_idle_on_an_empty_view() -> None:
    assert SequentialPlanner().plan(view()).is_idle


# -- policies ----------------------------------------------------------------------------------------

LIMITS = Limits(ModelSpec(latent_channels=4, vae_scale_factor=2, text_max_length=77, text_hidden_size=32,
                          size_multiple=8, default_size=64, max_size=256), max_running_requests=5)


def test_make_policy_builds_each_baseline_by_name() -> None:
    assert make_policy("sequential", LIMITS).planner == SequentialPlanner()
    assert make_policy("continuous", LIMITS).planner == ContinuousPlanner(5)
    assert make_policy("static", LIMITS).planner == StaticPlanner(5, 0.05)
    assert set(POLICIES) >= {"sequential", "static", "continuous", "synerdiff"}


def test_synerdiff_policies_need_a_profile() -> None:
    with pytest.raises(ValueError, match="latency profile"):
        make_policy("synerdiff", LIMITS)


@pytest.mark.parametrize("name", ["", "Continuous", "fifo", "synerdiff-fast"])
def test_make_policy_rejects_unknown_names_listing_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match="sequential, static, continuous, synerdiff"):
        make_policy(name, LIMITS)


# -- static ------------------------------------------------------------------------------------------


def test_static_waits_for_a_full_batch_until_the_queue_delay() -> None:
    young = tuple(RequestView(f"w{i}", SMALL, 2, 0, 4, waited_s=0.01) for i in range(2))
    plan = StaticPlanner(4, 0.05).plan(view(waiting=young))
    assert plan.is_idle and plan.retry_after_s == pytest.approx(0.04)
    old = tuple(RequestView(f"w{i}", SMALL, 2, 0, 4, waited_s=0.06) for i in range(2))
    assert StaticPlanner(4, 0.05).plan(view(waiting=old)) == StepPlan(admit=("w0", "w1"),
                                                                       unet_calls=(UnetCall(("w0", "w1")),))


def test_static_starts_a_full_batch_at_once_of_the_head_shape_only() -> None:
    queue = (req("w0"), req("w1"), req("w2", LARGE), req("w3"))
    assert StaticPlanner(2, 1.0).plan(view(waiting=queue)).admit == ("w0", "w1")
    assert StaticPlanner(4, 0.0).plan(view(waiting=queue)).admit == ("w0", "w1")


def test_static_runs_its_batch_to_the_end_then_decodes_it_all_before_admitting() -> None:
    planner = StaticPlanner(4, 0.0)
    plan = planner.plan(view(waiting=waiting(2), denoising=(req("d0"),), decode_ready=(req("f0", steps_done=4),)))
    assert plan == StepPlan(unet_calls=(UnetCall(("d0",)),))
    plan = planner.plan(view(waiting=waiting(2), decode_ready=(req("f0", steps_done=4), req("f1", steps_done=4))))
    assert plan == StepPlan(vae_after=(VaeCall(("f0", "f1")),))
