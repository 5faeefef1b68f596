"""Fit a run's lr schedule to a wall-clock budget: time a few warm-up steps, then fix the number of steps.

The decision falls inside the linear warm-up, whose lr does not depend on the schedule's length, so the run's
lr curve is exactly that of a run started with the decided length (schedule_steps) in the first place.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError
from .distributed import is_distributed

TIMED_STEPS_MAX = 50  # at most this many warm-up steps are looked at
SAFETY = 0.03  # share of the remaining budget kept for what the timed steps did not include (monitor, checkpoints)


def timing_window(warmup_steps: int) -> tuple[int, int]:
    """(first, last) step of the timed window: inside the warm-up, after the first fifth (loader start-up)."""
    end = min(TIMED_STEPS_MAX, warmup_steps)
    if end < 2:
        raise ConfigError(f"time_budget needs a warm-up of at least 2 steps to time, this run has {warmup_steps}; "
                          "raise warmup_epochs or drop time_budget")
    return end // 5, end


def fitted_steps(budget_s: float, spent_s: float, seconds_per_step: float, step: int, full_steps: int,
                 warmup_steps: int) -> tuple[int, str]:
    """(schedule length, warning or '') for the steps the rest of the budget pays for, capped at full_steps."""
    affordable = math.floor(max(0.0, budget_s - spent_s) * (1 - SAFETY) / seconds_per_step)
    steps = min(full_steps, step + affordable)
    if steps > warmup_steps or steps == full_steps:  # (a recipe whose warm-up outlasts its epochs keeps its length)
        return steps, ""
    # A schedule that ends inside the warm-up would never anneal: finish the warm-up, one cosine step, and say so.
    return warmup_steps + 1, (f"the time budget ends inside the lr warm-up ({warmup_steps} steps at "
                              f"{seconds_per_step:.2f} s each); the run will overrun it")


@dataclass
class BudgetTimer:
    """Times the window's steps in this process; `due` says when the decision is to be made."""

    first: int
    last: int
    started_at: float | None = None
    started_step: int = 0

    def observe(self, step: int) -> None:
        """Call before each step with the step about to run: starts the clock at the window (or at a resume)."""
        if self.started_at is None and self.first <= step < self.last:
            self.started_at, self.started_step = time.perf_counter(), step

    def due(self, step: int) -> bool:
        """True once the window's last step has run (step = steps done)."""
        return self.started_at is not None and step >= self.last

    def seconds_per_step(self, step: int) -> float:
        """Mean wall time of the steps timed so far."""
        return (time.perf_counter() - self.started_at) / max(1, step - self.started_step)


def agree(values: list[float], device: torch.device) -> list[float]:
    """The maximum of each value over ranks (the slowest rank sets the pace), the same on every rank."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()
