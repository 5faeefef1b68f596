"""The Objective interface: what a self-supervised method adds to the shared network, and how it scores the views.

The loop builds one network (trunk + projector, plus the objective's `head` if it has one, e.g. a predictor),
runs every view through it and hands the outputs to `Objective.loss`, which returns `(loss, parts)`: the scalar
to minimize and a dict of named, detached numbers for the health log. After each optimizer step it calls
`after_step` (an EMA target update, a predictor refresh). Whatever the objective keeps besides the network (a
target network, a running correlation estimate) lives in the objective itself, an nn.Module, so its
`state_dict()` goes into the checkpoint and `load_state_dict()` resumes it.

The distributed convention every loss follows (see barlow_twins.py): the returned loss is the loss of the
global batch, the same number on every rank, and its gradient w.r.t. each rank's own rows is that of the single
-process loss on the concatenated batch. The loop multiplies it by the world size before backward because DDP
averages parameter gradients over ranks.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from btembed.errors import BtembedError


class ObjectiveError(BtembedError):
    """An objective name or setting that cannot be used."""


@dataclass
class Views:
    """One step's views as the network saw them; an objective's loss reads what it needs."""

    z: tuple  # the projector's output of every view: the two large ones, then multi-crop's small ones
    p: tuple = ()  # the objective's head applied to each z (empty without a head)
    inputs: tuple = ()  # the normalized images of every view, in the same order (for a target network)


class Objective(nn.Module):
    """A self-supervised objective; subclasses set the class attributes and override what they need."""

    name: ClassVar[str] = ""  # the registry name, as in `objective=NAME`
    title: ClassVar[str] = ""  # how model cards name the method, with its paper
    Settings: ClassVar[type]  # a dataclass of the objective's settings, defaults = the authors'
    pairs_local_crops: ClassVar[bool] = False  # can multi-crop's small views be paired with the large ones?

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    @classmethod
    def make_settings(cls, **values):
        """The Settings from keyword values; unknown names say the nearest known one."""
        known = [f.name for f in dataclasses.fields(cls.Settings)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            guesses = [f"objective.{k} (did you mean objective.{close[0]}?)"
                       if (close := difflib.get_close_matches(k, known, 1)) else f"objective.{k}" for k in unknown]
            raise ObjectiveError(f"unknown setting(s) {', '.join(guesses)}; the settings of {cls.name} are "
                                 f"{', '.join(known) or 'none'}")
        return cls.Settings(**values)

    def settings_dict(self) -> dict:
        """The settings as plain values (what the config and the model card record)."""
        return dataclasses.asdict(self.settings)

    def describe(self) -> str:
        """The method and its settings in words, e.g. 'Barlow Twins (Zbontar et al. 2021), lambd 0.0051'."""
        values = ", ".join(f"{k} {v}" for k, v in self.settings_dict().items())
        return f"{self.title}{', ' + values if values else ''}"

    def head(self, dim: int) -> nn.Module | None:
        """Trainable modules the network applies to each view's projection (dim wide), e.g. a predictor."""
        return None

    def attach(self, network: nn.Module) -> None:
        """Called once the network holds its starting weights (and sits on its device): derive state from it."""

    def loss(self, views: Views) -> tuple[torch.Tensor, dict]:
        """(loss of the global batch, {part name: detached value}) from the network's outputs."""
        raise NotImplementedError

    def after_step(self, network: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimizer step, `step` steps done of `total_steps`."""


class TwoViewObjective(Objective):
    """An objective defined on one pair of projections; multi-crop's small views are paired with both large ones."""

    pairs_local_crops = True

    def pair(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(loss, parts) of one pair of views."""
        raise NotImplementedError

    def loss(self, views: Views) -> tuple[torch.Tensor, dict]:
        """The pair loss of the two large views; with small views the mean over all pairs (see over_pairs)."""
        return over_pairs(self.pair, views.z)


def positive(name: str, value: float, low: float = 0.0, strict: bool = False) -> None:
    """Refuse a setting below `low` (or at it, if strict) with one line naming it."""
    if value < low or (strict and value == low):
        bound = f"more than {low:g}" if strict else f"{low:g} or more"
        raise ObjectiveError(f"objective.{name} must be {bound}, not {value}")


def within(name: str, value: float, low: float, high: float) -> None:
    """Refuse a setting outside [low, high] with one line naming it."""
    if not low <= value <= high:
        raise ObjectiveError(f"objective.{name} must be between {low:g} and {high:g}, not {value}")


def exact(z: torch.Tensor) -> torch.Tensor:
    """A projection in the precision its loss is computed in: float64 stays, anything else becomes float32."""
    return z if z.dtype == torch.float64 else z.float()


def over_pairs(pair: Callable, z: tuple) -> tuple[torch.Tensor, dict]:
    """A two-view loss over the large pair and every small view paired with both large ones (multi-crop).

    The mean over all pairs keeps the scale of the two-view loss; the parts are the large pair's.
    """
    loss, parts = pair(z[0], z[1])
    small = z[2:]
    if small:
        loss = (loss + sum(pair(s, large)[0] for s in small for large in z[:2])) / (1 + 2 * len(small))
    return loss, parts
