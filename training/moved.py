"""Old `python -m training.X` names of commands that moved out of training: say the new name, then run it.

Forwarding goes through runpy by module name, so training itself never imports the packages it forwards to.
"""
from __future__ import annotations

import runpy
import sys


def forward(old: str, new: str) -> None:
    """Print one line with the new spelling, then run `python -m NEW` with the same arguments."""
    print(f"note: `python -m {old}` is now `python -m {new}` (same arguments); running that", file=sys.stderr)
    runpy.run_module(new, run_name="__main__", alter_sys=True)
