"""scheduler_backend.profile: UNet interpolation, peak and batch threshold, area scaling, JSON, validation, and the
fluid `overlap` model of a UNet call and VAE work sharing the device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scheduler_backend.profile import SCHEMA_VERSION, Contention, LatencyProfile, overlap

# rows/s rises from 1 row to a peak at 8 rows, then falls (a batch too large for the device).
PROFILE = LatencyProfile(
    latent_hw=(8, 8),
    unet_rows=(1, 2, 4, 8, 16),
    unet_seconds=(0.10, 0.12, 0.16, 0.20, 0.50),
    vae_chunk_seconds={"whole": 0.3, "stage0": 0.1, "tile": 0.05},
    contention={"whole": Contention(1.5, 2.0), "*": Contention(1.2, 1.1)},
    per_call_overhead_s=0.0,
    metadata={"machine": "test", "model": "tiny"},
)


def profile_with(**changes: Any) -> LatencyProfile:
    fields: dict[str, Any] = dict(latent_hw=(8, 8), unet_rows=(1, 2), unet_seconds=(0.1, 0.15),
                                  vae_chunk_seconds={"whole": 0.2})
    fields.update(changes)
    return LatencyProfile(**fields)


# -- UNet cost ---------------------------------------------------------------------------------------


def test_unet_cost_is_exact_at_measured_sizes_and_linear_between_them() -> None:
    for rows, seconds in zip(PROFILE.unet_rows, PROFILE.unet_seconds):
        assert PROFILE.unet_call_seconds(rows) == pytest.approx(seconds)
    assert PROFILE.unet_call_seconds(3) == pytest.approx(0.14)  # halfway between 2 and 4 rows
    assert PROFILE.unet_call_seconds(6) == pytest.approx(0.18)
    assert PROFILE.unet_call_seconds(12) == pytest.approx(0.35)


def test_unet_cost_below_the_smallest_size_is_that_size_and_zero_for_no_rows() -> None:
    assert PROFILE.unet_call_seconds(0.5) == pytest.approx(0.10)
    assert PROFILE.unet_call_seconds(0) == 0.0
    assert PROFILE.unet_call_seconds(-3) == 0.0


def test_unet_cost_extrapolates_the_last_segment_beyond_the_largest_size() -> None:
    slope = (0.50 - 0.20) / (16 - 8)
    assert PROFILE.unet_call_seconds(24) == pytest.approx(0.50 + 8 * slope)
    single = profile_with(unet_rows=(4,), unet_seconds=(0.2,))
    assert single.unet_call_seconds(8) == pytest.approx(0.4)  # one measurement: proportional beyond it
    assert single.unet_call_seconds(2) == pytest.approx(0.2)


@settings(max_examples=100, deadline=None)
@given(low=st.floats(0, 20), high=st.floats(0, 20))
def test_unet_cost_never_decreases_with_rows_for_an_increasing_measurement(low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert PROFILE.unet_call_seconds(low) <= PROFILE.unet_call_seconds(high) + 1e-12


def test_peak_rows_per_second_is_the_best_measured_batch() -> None:
    assert PROFILE.peak_rows_per_second == pytest.approx(8 / 0.20)
    assert PROFILE.rows_per_second(16) == pytest.approx(32.0)
    assert PROFILE.max_rows == 16


def test_threshold_rows_is_the_smallest_measured_batch_reaching_the_fraction_of_peak() -> None:
    # rows/s: 10, 16.7, 25, 40, 32 (peak 40 at 8 rows)
    assert PROFILE.threshold_rows(0.2) == 1
    assert PROFILE.threshold_rows(0.25) == 1  # exactly 10 rows/s
    assert PROFILE.threshold_rows(0.3) == 2
    assert PROFILE.threshold_rows(0.6) == 4
    assert PROFILE.threshold_rows(0.7) == 8  # 16 rows (32 rows/s = 0.8 x peak) is larger, 8 is the smallest
    assert PROFILE.threshold_rows(1.0) == 8


@st.composite
def profiles(draw: st.DrawFn) -> LatencyProfile:
    rows = sorted(draw(st.sets(st.integers(1, 64), min_size=1, max_size=8)))
    seconds = [draw(st.floats(1e-3, 10.0)) for _ in rows]
    overhead = draw(st.sampled_from([0.0, 0.01]))
    return LatencyProfile((8, 8), tuple(rows), tuple(seconds), {"whole": 0.1}, per_call_overhead_s=overhead)


@settings(max_examples=200, deadline=None)
@given(profile=profiles(), theta=st.floats(0.01, 1.0), other=st.floats(0.01, 1.0))
def test_threshold_rows_reaches_the_target_is_minimal_and_monotone(profile: LatencyProfile, theta: float,
                                                                    other: float) -> None:
    rows = profile.threshold_rows(theta)
    target = theta * profile.peak_rows_per_second
    assert rows in profile.unet_rows
    assert profile.rows_per_second(rows) >= target * (1 - 1e-9)
    assert all(profile.rows_per_second(smaller) < target for smaller in profile.unet_rows if smaller < rows)
    low, high = sorted((theta, other))
    assert profile.threshold_rows(low) <= profile.threshold_rows(high)


# -- area and overhead -------------------------------------------------------------------------------


def test_costs_scale_with_latent_area_and_add_the_per_call_overhead_once() -> None:
    profile = LatencyProfile((8, 8), (1, 2), (0.1, 0.16), {"whole": 0.2}, per_call_overhead_s=0.01)
    ratio = profile.area_ratio((16, 8))
    assert ratio == 2.0 and profile.area_ratio((8, 8)) == 1.0 and profile.area_ratio((4, 4)) == 0.25
    assert profile.unet_call_seconds(2, ratio) == pytest.approx(0.16 * 2 + 0.01)
    assert profile.chunk_seconds("whole", ratio) == pytest.approx(0.2 * 2 + 0.01)
    assert profile.unet_call_seconds(0, ratio) == 0.0  # no call, no overhead


def test_an_unknown_chunk_kind_names_the_kinds_the_profile_has() -> None:
    with pytest.raises(KeyError, match="stage3.*stage0, tile, whole"):
        PROFILE.chunk_seconds("stage3")


def test_contention_falls_back_to_the_wildcard_then_to_none() -> None:
    assert PROFILE.contention_for("whole") == Contention(1.5, 2.0)
    assert PROFILE.contention_for("tile") == Contention(1.2, 1.1)
    assert profile_with().contention_for("tile") == Contention(1.0, 1.0)


# -- JSON --------------------------------------------------------------------------------------------


def test_profile_round_trips_through_json_and_a_file(tmp_path: Path) -> None:
    data = PROFILE.to_json()
    assert data["schema_version"] == SCHEMA_VERSION
    assert LatencyProfile.from_json(json.loads(json.dumps(data))) == PROFILE
    path = tmp_path / "nested" / "profile.json"
    PROFILE.save(path)
    assert LatencyProfile.load(path) == PROFILE
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temporary file left


@pytest.mark.parametrize("version", [None, 0, SCHEMA_VERSION + 1, str(SCHEMA_VERSION)])
def test_other_schema_versions_are_rejected_asking_to_re_profile(version: object) -> None:
    data = PROFILE.to_json()
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    with pytest.raises(ValueError, match="re-run the profiler"):
        LatencyProfile.from_json(data)


@pytest.mark.parametrize("changes", [
    {"unet_rows": (), "unet_seconds": ()},
    {"unet_rows": (1, 2, 4), "unet_seconds": (0.1, 0.2)},
    {"unet_rows": (2, 1), "unet_seconds": (0.1, 0.2)},
    {"unet_rows": (1, 1), "unet_seconds": (0.1, 0.2)},
    {"unet_rows": (0, 1), "unet_seconds": (0.1, 0.2)},
    {"unet_seconds": (0.1, 0.0)},
    {"unet_seconds": (-0.1, 0.2)},
    {"vae_chunk_seconds": {"whole": 0.0}},
], ids=["empty", "lengths", "descending", "duplicate", "zero-rows", "zero-seconds", "negative-seconds",
        "zero-chunk"])
def test_invalid_profiles_are_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        profile_with(**changes)


@pytest.mark.parametrize("unet, vae", [(0.9, 1.0), (1.0, 0.5), (0.0, 0.0)])
def test_slowdowns_below_one_are_rejected(unet: float, vae: float) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        Contention(unet, vae)


# -- the fluid overlap model -------------------------------------------------------------------------


def test_without_contention_both_run_at_their_solo_speed() -> None:
    assert overlap(0.3, 0.5, Contention()) == pytest.approx((0.3, 0.5))
    assert overlap(0.5, 0.3, Contention()) == pytest.approx((0.5, 0.3))


def test_equal_work_at_half_speed_each_takes_twice_as_long() -> None:
    assert overlap(1.0, 1.0, Contention(2.0, 2.0)) == pytest.approx((2.0, 2.0))


def test_the_survivor_speeds_up_once_the_other_ends() -> None:
    # UNet 1 s, VAE 0.25 s, both at half speed: the VAE ends at 0.5 s with the UNet half done.
    assert overlap(1.0, 0.25, Contention(2.0, 2.0)) == pytest.approx((1.25, 0.5))
    assert overlap(0.25, 1.0, Contention(2.0, 2.0)) == pytest.approx((0.5, 1.25))


def test_nothing_to_overlap_returns_the_solo_times() -> None:
    assert overlap(0.0, 0.4, Contention(3.0, 3.0)) == (0.0, 0.4)
    assert overlap(0.4, 0.0, Contention(3.0, 3.0)) == (0.4, 0.0)


SOLO = st.floats(1e-4, 10.0)
SLOWDOWN = st.floats(1.0, 5.0)


@settings(max_examples=300, deadline=None)
@given(unet_s=SOLO, vae_s=SOLO, unet_slow=SLOWDOWN, vae_slow=SLOWDOWN)
def test_overlap_is_symmetric_in_its_two_workloads(unet_s: float, vae_s: float, unet_slow: float,
                                                   vae_slow: float) -> None:
    unet_end, vae_end = overlap(unet_s, vae_s, Contention(unet_slow, vae_slow))
    swapped_vae_end, swapped_unet_end = overlap(vae_s, unet_s, Contention(vae_slow, unet_slow))
    assert unet_end == pytest.approx(swapped_unet_end, rel=1e-9)
    assert vae_end == pytest.approx(swapped_vae_end, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(unet_s=SOLO, vae_s=SOLO, unet_slow=SLOWDOWN, vae_slow=SLOWDOWN)
def test_overlap_is_no_faster_than_solo_no_slower_than_serial_and_conserves_work(
        unet_s: float, vae_s: float, unet_slow: float, vae_slow: float) -> None:
    unet_end, vae_end = overlap(unet_s, vae_s, Contention(unet_slow, vae_slow))
    assert unet_end >= unet_s * (1 - 1e-12) and vae_end >= vae_s * (1 - 1e-12)
    assert max(unet_end, vae_end) >= max(unet_s, vae_s) * (1 - 1e-12)
    assert unet_end <= unet_s * unet_slow * (1 + 1e-12) and vae_end <= vae_s * vae_slow * (1 + 1e-12)
    # Work done = time shared / slowdown + time alone; each side does exactly its solo work.
    shared = min(unet_end, vae_end)
    assert shared / unet_slow + (unet_end - shared) == pytest.approx(unet_s, rel=1e-9)
    assert shared / vae_slow + (vae_end - shared) == pytest.approx(vae_s, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(unet_s=SOLO, vae_s=SOLO, slow=SLOWDOWN, more=st.floats(0.0, 2.0))
def test_more_contention_never_ends_either_side_earlier(unet_s: float, vae_s: float, slow: float,
                                                        more: float) -> None:
    assume(more > 0)
    base = overlap(unet_s, vae_s, Contention(slow, slow))
    worse = overlap(unet_s, vae_s, Contention(slow + more, slow + more))
    assert worse[0] >= base[0] * (1 - 1e-12) and worse[1] >= base[1] * (1 - 1e-12)
