"""The `btembed` command: parses arguments, dispatches to btembed/commands/*, turns user errors into one line.

Exit codes: 0 success (a run that completed with unreadable files listed, or whose reader closed stdout early),
1 nothing could be done (one clear line on stderr), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

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
    parser.commands = sub.choices  # name → that command's parser, for its own usage line on a bad option
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parsed arguments; a bare `btembed` prints the help and an unknown option shows its command's usage (exit 2)."""
    if not argv:
        parser.print_help(sys.stderr)
        sys.exit(2)
    # parse_args would report a subcommand's unknown option with the top-level usage, which names no option.
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def with_closable_stdout(run: Callable[[], int]) -> int:
    """run() with its output flushed; a reader that quit early (`| head`, a pager) ends it quietly with status 0.

    Python would otherwise print a BrokenPipeError traceback, and again when it flushes stdout at exit.
    """
    try:
        status = run()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, without a second error
        os.close(devnull)
        return 0


def refuse_unsharded_under_torchrun(command: str) -> int | None:
    """Under torchrun, the exit status for a command that does not shard (rank 0 says why in one line), else None."""
    from .commands import SHARDED_COMMANDS

    if command in SHARDED_COMMANDS or "WORLD_SIZE" not in os.environ:
        return None
    from .search.ranks import torchrun_ranks

    ranks = torchrun_ranks()
    if ranks is None:
        return None
    if ranks[0] == 0:
        print(f"btembed {command}: error: {command} does not spread over ranks (only "
              f"{', '.join(SHARDED_COMMANDS)} do); run it without torchrun", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    """Entry point of the console script."""
    # Every command here is inference beside decode threads: libgomp's default spin-waiting between torch ops
    # takes the cores the decoders need (bench/pipeline.py: torch bf16 index +11 %). Read when torch loads,
    # which is after this line; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if hasattr(sys.stdout, "reconfigure"):
        # A file name that is not UTF-8 prints as its raw bytes, as ls and find print it (JSON keeps the rule of
        # btembed.names instead).
        sys.stdout.reconfigure(errors="surrogateescape")
    args = parse_command_line(build_parser(), sys.argv[1:] if argv is None else list(argv))
    refused = refuse_unsharded_under_torchrun(args.command)
    if refused is not None:
        return refused
    try:
        return with_closable_stdout(lambda: int(args.run(args) or 0))
    except BtembedError as e:
        print(f"btembed {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"btembed {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # A file or folder no check foresaw (gone, unreadable, a full disk): one line naming it, not a traceback.
        from .images import os_cause

        name = f"{e.filename}: " if e.filename is not None else ""
        print(f"btembed {args.command}: error: {name}{os_cause(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
