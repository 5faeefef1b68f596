"""Trouble under DDP (2 gloo processes, torchrun): one rank's data or disk error stops all ranks; bad files count
globally."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.config import load_recipe
from training.data import ResumableSampler

from conftest import run_torchrun

REPO = Path(__file__).resolve().parents[1]
N_FILES = 16  # cpu-tiny: global batch 8 = 4 per rank, 2 steps per epoch, no file dropped


def rank1_first_batch() -> list[int]:
    """Indices of the files in rank 1's first local batch of epoch 0 (the sampler is deterministic)."""
    config = load_recipe("cpu-tiny")
    sampler = ResumableSampler(range(N_FILES), num_replicas=2, rank=1, seed=config.seed)
    sampler.set_position(0)
    return [i for _, i in list(sampler)[: config.batch_size // 2]]


def make_data(folder: Path, bad: list[int]) -> list[Path]:
    """N_FILES small noise PNGs, sorted by name as training lists them; the files at `bad` are empty."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = [folder / f"img{i:02d}.png" for i in range(N_FILES)]
    for i, path in enumerate(paths):
        if i in bad:
            path.write_bytes(b"")
        else:
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return [paths[i] for i in bad]


def torchrun_fit(data: Path, out: Path, *overrides: str, timeout: float = 240,
                 entry: tuple[str, ...] = ("-m", "training")) -> tuple[int, str, float]:
    """`torchrun --nproc_per_node=2 -m training fit` on cpu-tiny; returns (exit code, stderr, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # The agent looks at its workers every 2 s: a rank that stops by itself has time to say so before the agent
    # would tear it down after the other rank's exit.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor-interval=2", *entry, "fit", "--recipe", "cpu-tiny", "--data", str(data),
           "--out", str(out), "--no-progress", *overrides]
    started = time.monotonic()
    code, stderr = run_torchrun(cmd, REPO, env, timeout)
    return code, stderr, time.monotonic() - started


def test_data_error_on_one_rank_stops_every_rank(tmp_path):
    bad = make_data(tmp_path / "data", rank1_first_batch())  # rank 1's whole first batch is unreadable
    code, stderr, seconds = torchrun_fit(tmp_path / "data", tmp_path / "run", timeout=300)
    assert code != 0
    assert seconds < 90, f"took {seconds:.0f} s"
    # Rank 1 names the cause; rank 0 stops on its own before the step, instead of waiting for rank 1 inside a
    # collective (gloo notices the peer's exit there, NCCL does not and would wait out its timeout).
    assert "training: error: a whole batch of files" in stderr and bad[0].name in stderr, stderr[-3000:]
    assert "training: error: process 1 of 2 failed to load its batch for step 1" in stderr, stderr[-3000:]
    assert "Connection closed by peer" not in stderr and "[rank0]:" not in stderr, stderr[-3000:]


def test_bad_file_count_is_summed_over_ranks(tmp_path):
    bad = make_data(tmp_path / "data", rank1_first_batch()[:2])  # 2 of rank 1's 4 files: only rank 1 sees them
    out = tmp_path / "run"
    code, stderr, _ = torchrun_fit(tmp_path / "data", out, "epochs=1")
    assert code == 0, stderr[-3000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["finished"] and ck["step"] == 2
    assert ck["data"]["bad_files"] == 2
    assert sorted(e.split(":")[0] for e in ck["data"]["bad_examples"]) == sorted(map(str, bad))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_files"] for r in records] == [2, 0]  # step 1 had them, on rank 1
    assert all(f"skipping unreadable file {p}" in stderr for p in bad)  # said by rank 0


def test_checkpoint_write_failing_on_rank0_stops_every_rank(tmp_path):
    make_data(tmp_path / "data", [])
    worker = str(REPO / "tests" / "training_side_failure_worker.py")  # rank 0's disk is full
    code, stderr, seconds = torchrun_fit(tmp_path / "data", tmp_path / "run", "epochs=1", entry=(worker,))
    assert code != 0
    assert seconds < 90, f"took {seconds:.0f} s"
    assert "No space left on device" in stderr, stderr[-3000:]
    # Rank 1 hears of it in the agreement after the write instead of finding rank 0 gone in its next collective.
    assert "training: error: process 0 of 2 failed while writing the checkpoint of step 2" in stderr, stderr[-3000:]
    assert "Connection closed by peer" not in stderr, stderr[-3000:]


def test_time_budget_schedule_is_agreed_over_ranks(tmp_path):
    make_data(tmp_path / "data", [])
    out = tmp_path / "run"
    # 2 steps per epoch, an 8-step warm-up: steps 1-8 are timed on both ranks (the slower one counts), and a budget
    # that ends inside the warm-up gives 9 steps on both, which both run and stop at together.
    code, stderr, _ = torchrun_fit(tmp_path / "data", out, "epochs=6", "warmup_epochs=4", "time_budget=0.0001")
    assert code == 0, stderr[-3000:]
    assert "over steps 1-8, so the lr schedule is 9 steps" in stderr, stderr[-3000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["schedule_steps"] == 9 and ck["step"] == 9 and ck["finished"] and ck["world_size"] == 2
