"""Subcommands of the `btembed` command, one module each; shared output helpers live here.

Convention: with --json, stdout carries only the JSON document; progress, warnings and summaries go to stderr.
Command modules must not import torch at module level, so `btembed --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys

# Every module in this package with a register(subparsers) adds its subcommands; this order comes first in --help,
# modules not named here follow alphabetically (so a new command needs no edit here).
HELP_ORDER = ("index", "search", "dedup", "embed", "probe", "predict", "export", "models", "info")
# Commands that spread their work over torchrun's ranks; the others are refused under torchrun (they would run
# whole on every rank and print everything once per rank).
SHARDED_COMMANDS = ("index", "embed")


def command_modules() -> list[str]:
    """Names of the command modules in this package, in help order."""
    import pkgutil

    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [n for n in HELP_ORDER if n in found] + [n for n in found if n not in HELP_ORDER]


def print_json(obj) -> None:
    """Write one JSON document to stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A human-readable line on stderr."""
    print(message, file=sys.stderr, flush=True)


def count_at_least(minimum: int):
    """An argparse type: an integer no smaller than minimum (a usage error otherwise, not a traceback later)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


def seconds_at_least_zero(text: str) -> float:
    """An argparse type: a duration in seconds, 0 or more (a usage error otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def add_model_args(parser) -> None:
    """--model/--revision/--backend/--device/--precision/--batch-size/--workers, shared by every command that embeds."""
    parser.add_argument("--batch-size", type=count_at_least(1), default=64)
    parser.add_argument("--workers", type=count_at_least(0), default=None,
                        help="decode workers (default: one per core, at most 4; 0 decodes in the main thread)")
    parser.add_argument("--model", "-m", default=None,
                        help="model folder, registry name (btembed/r50) or Hugging Face repo id; "
                             "default: the embedded model")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) to pin")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                        help="auto (default): int8 on a CPU where the model's parity record vouches for its "
                             "model.int8.onnx, else fp32 (an existing index keeps its own); int8 runs that file")


def load_embedder(args):
    """An Embedder for the model arguments of a parsed command line."""
    from ..embedder import Embedder

    # The backend loads while the first images decode; a load error surfaces at the first batch.
    return Embedder.from_pretrained(args.model, revision=args.revision, device=args.device,
                                    backend=args.backend, precision=args.precision, load_async=True)
