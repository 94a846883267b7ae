"""The arithmetic of `synerdiff overhead` (perf/overhead.py): the served step is a marginal cost, the overhead what
serving adds to the bare UNet call."""

from __future__ import annotations

import pytest

from client.cli import main as cli_main
from perf.overhead import Probe, StepOverhead, format_table, marginal_step_seconds


def test_the_served_step_is_the_marginal_cost_of_the_median_walls() -> None:
    # medians 1.0 and 2.6 s for 4 and 20 steps: 0.1 s per step, whatever is paid once per request
    assert marginal_step_seconds([1.0, 0.9, 5.0], [2.6, 2.5, 9.0], 4, 20) == pytest.approx(0.1)


@pytest.mark.parametrize(("low", "high"), [(4, 4), (20, 4)])
def test_the_step_counts_must_differ_upwards(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="high_steps"):
        marginal_step_seconds([1.0], [2.0], low, high)


def test_overhead_and_its_fraction_of_the_unet_step() -> None:
    step = StepOverhead(concurrency=2, rows=4, bare_step_s=0.040, served_step_s=0.050, loop_own_step_s=0.002)
    assert step.overhead_s == pytest.approx(0.010) and step.fraction == pytest.approx(0.25)


def test_the_table_has_a_row_per_concurrency() -> None:
    table = format_table([StepOverhead(1, 2, 0.040, 0.050, 0.002), StepOverhead(4, 8, 0.100, 0.101, 0.0005)])
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2] == "| 1 | 2 | 40.00 ms | 50.00 ms | +10.00 ms | +25.0% | 2.00 ms |"
    assert lines[3].endswith("| +1.00 ms | +1.0% | 0.50 ms |")


@pytest.mark.parametrize(("guidance", "rows"), [(7.5, 2), (1.0, 1)])
def test_a_guided_request_is_two_unet_rows(guidance: float, rows: int) -> None:
    assert Probe("cpu", (1,), 2, 6, guidance, 1).rows_per_request == rows


@pytest.mark.parametrize("steps", ["4,4", "4", "0,4", "4,x", "4,8,12"])
def test_the_command_refuses_anything_but_two_different_step_counts(
        steps: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["overhead", f"--steps={steps}"]) == 2
    assert f"expected two different step counts LOW,HIGH (>= 1), got {steps!r}" in capsys.readouterr().err
