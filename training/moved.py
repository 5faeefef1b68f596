"""Old `python -m training.X` names of commands that moved out of training: they say the new spelling and stop.

They do not run the new command: training never reaches into devdata/ or hub/, not even at run time.
"""
from __future__ import annotations

import shlex
import sys


def forward(old: str, new: str) -> None:
    """Print one line naming the new command (with the arguments given), then exit with the usage status 2."""
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"training: `python -m {old}` has moved; run `python -m {new}{' ' + args if args else ''}` "
          "(same arguments)", file=sys.stderr)
    raise SystemExit(2)
