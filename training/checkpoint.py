"""Atomic checkpoints of a run (tensors and plain Python values only: loadable with weights_only=True)."""
from __future__ import annotations

import os
import pickle
import random
import secrets
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    """Every RNG a run touches, as tensors and primitives."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Temporary files of checkpoint writes in run_dir (left behind if a write was killed; never a checkpoint)."""
    return sorted(Path(run_dir).glob(f".{CHECKPOINT}.*"))


def remove_stale_temp_files(run_dir: str | Path) -> None:
    """Delete what earlier killed checkpoint writes left; only the run's single writer (rank 0) may call this."""
    for tmp in stale_temp_files(run_dir):
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict, run_dir: str | Path) -> Path:
    """Write run_dir/checkpoint.pt via a temporary file, fsync and rename: a crash never leaves half a file."""
    path = Path(run_dir) / CHECKPOINT
    # Leftovers of killed writes go first (each can be as large as a checkpoint); a fresh name per write means a
    # leftover is never reopened or renamed into place.
    remove_stale_temp_files(run_dir)
    tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(run_dir: str | Path, map_location="cpu") -> dict | None:
    """The run's checkpoint, or None when there is none yet; never unpickles arbitrary objects."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch's unpickler fails on foreign bytes with any of a dozen exception types
        # Truncated, overwritten or foreign bytes: say so in one line (torch's own text would suggest
        # weights_only=False, i.e. running whatever code the file holds).
        if isinstance(e, pickle.UnpicklingError):  # torch's text here advises weights_only=False: not ours to say
            first = "not tensors-only torch data"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            first = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise ConfigError(f"{path} is not a readable training checkpoint ({first[:160]}); move it away to start "
                          "the run over, or point --out at another folder") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path} is not a btembed training checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def init_weights(model: torch.nn.Module, config) -> dict:
    """Load the weights config.init_from names into model; returns where they came from.

    A training run folder gives trunk and projector; a model folder, registry name or hub repo gives the trunk
    only (exports drop the projector), and the projector keeps its random init.
    """
    source = Path(config.init_from).expanduser()
    run = source.parent if source.name == CHECKPOINT else source
    if (run / CHECKPOINT).is_file():
        return _init_from_run(model, config, run)
    return _init_from_model(model, config, source)


def _init_from_run(model: torch.nn.Module, config, run: Path) -> dict:
    """Trunk and projector from another run's checkpoint; its objective's head too when this run has the same."""
    ck = load_checkpoint(run)
    theirs, mine = ck["config"], config.to_dict()
    for key in ("architecture", "projector"):
        if theirs[key] != mine[key]:
            raise ConfigError(f"init_from={config.init_from} was trained with {key}={theirs[key]!r}, this run has "
                              f"{key}={mine[key]!r}; the weights cannot be loaded")
    body = {k: v for k, v in ck["model"].items() if not k.startswith("head.")}
    head = {k[len("head."):]: v for k, v in ck["model"].items() if k.startswith("head.")}
    model.load_state_dict(body, strict=False)
    mine_head = model.head.state_dict() if model.head is not None else {}
    if head.keys() == mine_head.keys() and all(head[k].shape == mine_head[k].shape for k in head):
        if head:
            model.head.load_state_dict(head)  # e.g. a BYOL run continued: its predictor too; else it starts fresh
    return {"kind": "run", "from": str(run.resolve()), "step": ck["step"], "total_steps": ck["total_steps"],
            "recipe": theirs["recipe"], "seed": theirs["seed"], "data": ck["data"]["path"]}


def _init_from_model(model: torch.nn.Module, config, source: Path) -> dict:
    """The trunk of a model folder, registry name or hub repo (sha256-verified safetensors); projector stays fresh."""
    from btembed.errors import BtembedError
    from btembed.modelfolder import WEIGHTS_FILE, ModelFolder

    try:
        resolved = ModelFolder.resolve(config.init_from)
        folder, theirs = resolved.path, resolved.config
    except (BtembedError, OSError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"init_from={config.init_from}: not a training run (no {CHECKPOINT}) and not a usable "
                          f"model ({e})") from None
    if theirs.architecture != config.architecture:
        raise ConfigError(f"init_from={config.init_from} is a {theirs.architecture}, this run has "
                          f"architecture={config.architecture!r}; the weights cannot be loaded")
    try:
        state = resolved.load_state_dict()
    except BtembedError as e:
        raise ConfigError(f"init_from={config.init_from}: {e}") from None
    missing, unexpected = model.trunk.trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        # A torchvision trunk of the same architecture has exactly these keys: anything else is another network.
        raise ConfigError(f"init_from={config.init_from}: its weights do not fit a {config.architecture} trunk "
                          f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. "
                          f"{unexpected[:2]})")
    return {"kind": "model", "from": str(source.resolve()) if source.is_dir() else config.init_from,
            "folder": str(Path(folder).resolve()), "name": theirs.name,
            "weights_sha256": theirs.files.get(WEIGHTS_FILE, "")}


def describe_init(init: dict) -> str:
    """Where a run's starting weights came from, in words (for the log and the model card)."""
    if init.get("kind") == "model":
        return (f"the trunk of the model {init['from']} (weights sha256 {init['weights_sha256'][:12] or 'unknown'}; "
                "the projector from random init)")
    return (f"the weights of an earlier run ({init['from']}, step {init['step']}, recipe `{init['recipe']}`, "
            f"seed {init['seed']})")
