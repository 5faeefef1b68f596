"""Training objectives, one file each: `get(name, **settings)` gives the Objective (see base.py)."""
from __future__ import annotations

import difflib
import importlib

from .base import Objective, ObjectiveError, Views

DEFAULT = "barlow_twins"
# One line per objective: the module under training/objectives/ whose OBJECTIVE is the class.
MEMBERS = (
    "barlow_twins",
    "vicreg",
    "simclr",
    "byol",
    "simsiam",
    "directpred",
)

__all__ = ["DEFAULT", "MEMBERS", "Objective", "ObjectiveError", "Views", "find", "get"]


def find(name: str) -> type[Objective]:
    """The Objective class registered under `name`; an unknown name says the nearest one."""
    if name not in MEMBERS:
        close = difflib.get_close_matches(str(name), MEMBERS, 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ObjectiveError(f"unknown objective {name!r}{hint}; the objectives are {', '.join(MEMBERS)}")
    return importlib.import_module(f"{__name__}.{name}").OBJECTIVE


def get(name: str, **settings) -> Objective:
    """A fresh objective `name` with its settings (the authors' defaults where not given)."""
    cls = find(name)
    return cls(cls.make_settings(**settings))
