"""Models from a Hugging Face cache layout, offline; `btembed models` and where each model is available."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import NO_NETWORK_CLI, make_model_dir

SHA = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo_id: str, folder: Path, sha: str = SHA) -> Path:
    """Lay out folder as huggingface_hub's cache does: models--org--name/refs/main + snapshots/<sha>/."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    shutil.copytree(folder, snapshot)
    return snapshot


def run(args, env, timeout=120):
    """A fresh Python process with the given environment additions (HF settings are read at import)."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


EMBED = """
import json, sys
import numpy as np
from btembed import Embedder
emb = Embedder.from_pretrained(sys.argv[1])
pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
print(json.dumps({"folder": str(emb.folder), "vectors": emb.backend(pixels, normalize=True).tolist()}))
"""


def test_cached_repo_loads_offline_with_same_vectors(tmp_path):
    folder = make_model_dir(tmp_path / "model", seed=4)
    cache = tmp_path / "hf"
    snapshot = fill_cache(cache, "org/name", folder)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cached = run(["-c", EMBED, "org/name"], env)
    assert cached.returncode == 0, cached.stderr
    local = run(["-c", EMBED, str(folder)], env)
    got, want = json.loads(cached.stdout), json.loads(local.stdout)
    assert Path(got["folder"]).resolve() == snapshot.resolve()
    np.testing.assert_array_equal(np.array(got["vectors"]), np.array(want["vectors"]))


def test_empty_cache_offline_fails_fast_with_one_sentence(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}
    out = run(["-c", NO_NETWORK_CLI, "info", "org/name"], env, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "network connection attempted" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "org/name" in out.stderr and "cache" in out.stderr and "offline" in out.stderr


def test_models_lists_registry_with_availability(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}
    out = run(["-m", "btembed", "models", "--json"], env)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["models"]}
    # not on the Hub, but the authors' file is: downloadable, with the licence of their LICENSE
    assert rows["btembed/r50"]["status"] == "downloadable" and rows["btembed/r50"]["released"] is False
    assert rows["btembed/r50"]["license"] == "mit" and rows["btembed/simsiam-r50"]["license"] == "cc-by-nc-4.0"
    text = run(["-m", "btembed", "models"], env)
    assert "btembed/r50" in text.stdout and "downloadable" in text.stdout and "cc-by-nc-4.0" in text.stdout
    # an entry with neither a release nor a source is "not released yet"
    later = {"repo_id": "org/later", "released": False, "revision": None, "architecture": "resnet50",
             "embedding_dim": 2048, "license": "mit"}
    (tmp_path / "registry.json").write_text(json.dumps({"default": None, "models": {"org/later": later}}))
    text = run(["-m", "btembed", "models"], {**env, "BTEMBED_REGISTRY": str(tmp_path / "registry.json")})
    assert "org/later" in text.stdout and "not released yet" in text.stdout

    # a copy placed in the local cache (e.g. carried over from another machine) is found, still offline
    cache = tmp_path / "hf"
    fill_cache(cache, "btembed/r50", make_model_dir(tmp_path / "r50", seed=1))
    out = run(["-m", "btembed", "models", "--json"], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    row = {r["name"]: r for r in json.loads(out.stdout)["models"]}["btembed/r50"]
    assert row["status"] == "cached" and Path(row["folder"]).name == SHA


def test_availability_order(tmp_path, monkeypatch):
    from btembed.commands import models

    monkeypatch.setattr("btembed.modelfiles.embedded_dir", lambda: tmp_path)
    make_model_dir(tmp_path / "tiny")
    monkeypatch.setattr(models, "cached_folder", lambda repo, rev: None)
    assert models.availability("a", {"repo_id": "o/a", "embedded": "tiny"}) == ("embedded", str(tmp_path / "tiny"))
    assert models.availability("b", {"repo_id": "o/b", "released": True, "revision": SHA}) == ("downloadable", None)
    assert models.availability("c", {"repo_id": "o/c", "released": False}) == ("unreleased", None)
    monkeypatch.setattr(models, "cached_folder", lambda repo, rev: "/cache/x")
    assert models.availability("b", {"repo_id": "o/b", "released": True, "revision": SHA}) == ("cached", "/cache/x")


def test_registry_pin_of_config_json_is_enforced(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import pytest

    from btembed import sources
    from btembed.errors import ModelError
    from btembed.modelfolder import ModelFolder
    from hub.registry_tools import entry_from_folder

    folder = make_model_dir(tmp_path / "model", seed=6)
    cache = tmp_path / "hf"
    snapshot = fill_cache(cache, "org/pinned", folder)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = entry_from_folder(folder, "org/pinned", SHA)
    monkeypatch.setattr(sources, "load_registry", lambda: {"default": None, "models": {"test/pinned": entry}})
    assert ModelFolder.resolve("test/pinned").path.resolve() == snapshot.resolve()
    config = json.loads((snapshot / "config.json").read_text())
    config["files"]["model.safetensors"] = "0" * 64  # a tampered cache entry
    (snapshot / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="recorded in the registry"):
        ModelFolder.resolve("test/pinned")
