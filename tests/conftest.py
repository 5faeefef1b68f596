"""Shared fixtures: real photos from scikit-image's wheel, and tiny random-init model folders."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# hub/ and training/ are repository-root tools, not installed packages: make them importable under plain `pytest`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# scikit-image ships these photos inside its wheel: real images with no network needed.
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field")


# Every socket connection raises: "fails fast" means the offline path never reaches for the network at all.
NO_NETWORK_CLI = """
import socket, sys
def refuse(*args, **kwargs):
    raise AssertionError("network connection attempted")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
from btembed.cli import main
sys.exit(main(sys.argv[1:]))
"""


def skimage_photos() -> dict[str, np.ndarray]:
    """name → uint8 RGB array of scikit-image's bundled photos."""
    from skimage import data

    return {name: getattr(data, name)() for name in PHOTO_NAMES}


@pytest.fixture(scope="session", autouse=True)
def btembed_cache(tmp_path_factory):
    """Keep ONNX exports of test models out of ~/.cache (subprocesses inherit the variable)."""
    import os

    old = os.environ.get("BTEMBED_CACHE")
    os.environ["BTEMBED_CACHE"] = str(tmp_path_factory.mktemp("btembed-cache"))
    yield
    if old is None:
        os.environ.pop("BTEMBED_CACHE", None)
    else:
        os.environ["BTEMBED_CACHE"] = old


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """A folder with six real photos as JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    for name, pixels in skimage_photos().items():
        Image.fromarray(pixels).save(folder / f"{name}.jpg", quality=92)
    return folder


@pytest.fixture(scope="session")
def photo_paths(photos_dir):
    """The six photo paths, sorted."""
    return sorted(photos_dir.glob("*.jpg"))


def make_model_dir(folder, architecture="resnet18", input_size=64, resize_size=72, seed=0):
    """Save a random-init encoder as a model folder (small inputs keep tests fast)."""
    import torch

    from btembed import Encoder

    torch.manual_seed(seed)
    encoder = Encoder.from_config({"architecture": architecture, "name": f"test/{architecture}",
                                   "preprocess": {"input_size": input_size, "resize_size": resize_size}})
    encoder.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init resnet18 model folder at 64 px input."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny-r18")


def run_torchrun(cmd: list[str], cwd, env: dict, timeout: float):
    """Run a torchrun command in its own session -> (returncode, stderr); on timeout or Ctrl-C SIGTERM it first,
    so torchrun stops its workers (each in a session of its own, out of reach of a kill aimed at torchrun) before
    it exits; a bare SIGKILL, as subprocess.run's timeout sends, orphaned them."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return proc.returncode, stderr


def pretend_torchrun_rank(monkeypatch, rank: int, world_size: int = 2) -> None:
    """The environment torchrun gives one rank (no process group is started)."""
    for key, value in (("WORLD_SIZE", world_size), ("RANK", rank), ("LOCAL_RANK", rank), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(key, str(value))
