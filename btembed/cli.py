"""The `btembed` command: parses arguments, dispatches to btembed/commands/*, turns user errors into one line.

Exit codes: 0 success, 1 user error (one clear line on stderr), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import BtembedError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    from .commands import command_modules

    parser = argparse.ArgumentParser(
        prog="btembed", description="Barlow Twins image embeddings: embed, index, search, dedup, probe, export.")
    parser.add_argument("--version", action="version", version=f"btembed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script."""
    # Every command here is inference beside decode threads: libgomp's default spin-waiting between torch ops
    # takes the cores the decoders need (bench/pipeline.py: torch bf16 index +11 %). Read when torch loads,
    # which is after this line; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BtembedError as e:
        print(f"btembed {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"btembed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
