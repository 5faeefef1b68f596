"""The btembed command: embed and info, output conventions (JSON only on stdout) and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import NO_NETWORK_CLI, pretend_torchrun_rank


def btembed(*args, env=None, timeout=120):
    """Run the installed command line in a fresh process."""
    return subprocess.run([sys.executable, "-m", "btembed", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_help_lists_commands():
    out = btembed("--help")
    assert out.returncode == 0 and "embed" in out.stdout and "info" in out.stdout


def test_embed_folder_writes_vectors_and_sidecar(tiny_model_dir, photos_dir, tmp_path):
    (photos_dir.parent / "extra").mkdir(exist_ok=True)
    bad = photos_dir.parent / "extra" / "zero.jpg"
    bad.write_bytes(b"")
    out = btembed("embed", photos_dir, bad, "-o", tmp_path / "vecs.npy", "--model", tiny_model_dir, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # stdout is only the JSON document
    X = np.load(tmp_path / "vecs.npy")
    assert X.shape == (6, 512) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    sidecar = json.loads((tmp_path / "vecs.json").read_text())
    assert sidecar["paths"] == summary["paths"] and len(sidecar["paths"]) == 6
    assert sidecar["precision"] == summary["precision"] == "fp32"  # which vectors these are (no int8 file here)
    assert sidecar["failures"] == [{"path": str(bad), "error": "empty file (0 bytes)"}]
    assert "zero.jpg" in out.stderr


def test_info_and_user_errors(tiny_model_dir, tmp_path):
    out = btembed("info", tiny_model_dir, "--verify", "--json")
    info = json.loads(out.stdout)
    assert info["architecture"] == "resnet18" and info["verified"] == {"model.safetensors": "ok"}
    missing = btembed("embed", tmp_path / "nothing-here", "-o", tmp_path / "x.npy", "--model", tiny_model_dir)
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    usage = btembed("embed")
    assert usage.returncode == 2


def test_unreleased_model_offline_fails_fast_with_one_sentence(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    env["BTEMBED_CACHE"] = str(tmp_path / "btembed-cache")
    out = subprocess.run([sys.executable, "-c", NO_NETWORK_CLI, "models", "fetch", "btembed/r50"], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "network connection attempted" not in out.stderr
    assert "btembed's cache" in out.stderr and "offline" in out.stderr and "--from FILE" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["embed", "x.jpg", "--workers", "-1"], "argument --workers: must be at least 0, not -1"),
    (["index", "photos", "--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
    (["probe", "photos", "--workers", "two"], "argument --workers: not a whole number: 'two'"),
    (["search", "photos", "q.jpg", "-k", "0"], "argument -k: must be at least 1, not 0"),
    (["predict", "clf", "q.jpg", "--top", "0"], "argument --top: must be at least 1, not 0"),
    (["index", "photos", "--wait", "-1"], "argument --wait: must be 0 or more seconds, not -1"),
    (["index", "photos", "--bogus"], "btembed index: error: unrecognized arguments: --bogus"),
])
def test_counts_out_of_range_are_usage_errors(args, message, capsys):
    from btembed.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_zero_memory_cap_is_refused(tmp_path, capsys):
    from btembed.cli import main

    assert main(["index", str(tmp_path), "--max-memory", "0"]) == 1
    assert "a size must be more than 0, not '0'" in capsys.readouterr().err


def test_openmp_threads_sleep_instead_of_spinning_unless_user_chose(monkeypatch):
    from btembed.cli import main

    monkeypatch.setenv("OMP_WAIT_POLICY", "unset-marker")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_bare_btembed_lists_the_commands(capsys):
    from btembed.cli import main

    with pytest.raises(SystemExit) as e:
        main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "index" in err and "search" in err and "export-index" in err


def test_an_unknown_option_shows_its_commands_usage(capsys):
    from btembed.cli import main

    with pytest.raises(SystemExit):
        main(["index", "photos", "--bogus"])
    assert "usage: btembed index" in capsys.readouterr().err


def test_search_of_a_file_says_it_is_a_file(photo_paths, capsys):
    from btembed.cli import main

    assert main(["search", str(photo_paths[0]), str(photo_paths[1])]) == 1
    assert capsys.readouterr().err == f"btembed search: error: {photo_paths[0]} is a file, not a folder; give an " \
                                      "indexed folder\n"


@pytest.mark.parametrize("rank", [0, 1])
def test_commands_that_do_not_shard_are_refused_under_torchrun(rank, photo_paths, monkeypatch, capsys):
    from btembed.cli import main

    pretend_torchrun_rank(monkeypatch, rank)
    assert main(["search", str(photo_paths[0].parent), str(photo_paths[0])]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no results printed once per rank
    assert captured.err == ("btembed search: error: search does not spread over ranks (only index, embed do); run it "
                            "without torchrun\n" if rank == 0 else "")
