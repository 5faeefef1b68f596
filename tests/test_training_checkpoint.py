"""Checkpoint writes: a write killed half-way leaves a temp file that the next save or resume removes."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A writer process that dies inside torch.save after some bytes, as if SIGKILLed mid-write: no cleanup runs.
KILLED_WRITER = """
import os, sys, torch
from training.checkpoint import save_checkpoint
def dying_save(obj, f):
    f.write(b"half a checkpoint" * 1000)
    f.flush()
    os._exit(9)
torch.save = dying_save
save_checkpoint({"step": 99}, sys.argv[1])
"""


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def killed_write(run_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr


def test_killed_write_leftover_is_ignored_then_removed_by_next_save(tmp_path):
    save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path)
    killed_write(tmp_path)
    (tmp_path / f".{CHECKPOINT}.tmp-12345").write_bytes(b"old-style leftover")  # the earlier naming scheme
    assert len(names(tmp_path)) == 3
    # The leftovers are never taken for the checkpoint: the last complete one is still what loads.
    assert load_checkpoint(tmp_path)["step"] == 1
    save_checkpoint({"step": 2, "w": torch.zeros(3)}, tmp_path)
    assert names(tmp_path) == [CHECKPOINT]
    assert load_checkpoint(tmp_path)["step"] == 2


def test_failed_write_removes_its_own_temp_file(tmp_path, monkeypatch):
    save_checkpoint({"step": 1}, tmp_path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2}, tmp_path)
    assert names(tmp_path) == [CHECKPOINT]
    assert load_checkpoint(tmp_path)["step"] == 1


def test_resume_removes_leftovers_even_when_nothing_is_left_to_train(tmp_path):
    from training.config import apply_overrides, load_recipe
    from training.loop import fit

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    config = apply_overrides(load_recipe("cpu-tiny"), ["epochs=1", "projector=[16]"])  # 8 images: one step
    out = tmp_path / "run"
    fit(config, data, out, device="cpu", progress=False)
    assert load_checkpoint(out)["finished"]
    before = names(out)
    killed_write(out)
    assert len(names(out)) == len(before) + 1
    fit(config, data, out, device="cpu", progress=False)  # already finished: no save, but the resume cleans up
    assert names(out) == before and load_checkpoint(out)["step"] == 1
