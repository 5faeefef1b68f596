"""ONNX export and the onnxruntime backend: graph contract, parity with torch, int8, export cache, CLI, example."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from btembed import Embedder, ModelError
from btembed.backends import auto_backend
from btembed.backends import onnx as onnx_backend
from btembed.backends.onnx import OnnxBackend, pick_providers
from btembed.cli import main
from btembed.config import ModelConfig
from btembed.backends.onnx_check import compare
from btembed.backends.int8 import quantize_int8
from btembed.backends.onnx_export import read_metadata
from btembed.modelfiles import sha256_file
from btembed.preprocess import load_pixels

from conftest import make_model_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Every test gets its own user cache, never ~/.cache."""
    monkeypatch.setenv("BTEMBED_CACHE", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "onnx"


def raw_session(path):
    """A plain onnxruntime session, nothing from btembed."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def shape_of(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """A random-init resnet18 folder at 64 px, its CLI export (`btembed export --json`) and the printed report."""
    root = tmp_path_factory.mktemp("onnx")
    folder, out = make_model_dir(root / "r18", seed=1), root / "r18.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(folder), "--onnx", str(out), "--json"]) == 0
    return folder, out, stdout.getvalue()


def test_cli_export_json_contract_and_metadata(r18):
    folder, out, stdout = r18
    report = json.loads(stdout)  # stdout holds only the JSON document
    assert report["onnx"] == str(out) and report["sha256"] == sha256_file(out) and report["opset"] >= 17
    assert report["parity_vs_torch"]["max_relative_diff"] <= 1e-4
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), outputs = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert isinstance(shape_of(inp)[0], str) and shape_of(inp)[1:] == [64, 64, 3]
    assert [o.name for o in outputs] == ["embedding", "features"]
    meta = read_metadata(out)
    assert meta["model_id"] == "test/resnet18" and meta["input_size"] == "64" and meta["resize_size"] == "72"
    assert meta["interpolation"] == "bilinear" and meta["crop"] == "center"
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert meta["weights_sha256"] == ModelConfig.load(folder).files["model.safetensors"]
    assert out.stat().st_mode & 0o777 == 0o644  # readable by a server running as another user


def test_dynamic_batch_unit_rows_and_features(r18, photo_paths):
    folder, out, _ = r18
    session = raw_session(out)
    pixels = np.stack([load_pixels(p, ModelConfig.load(folder).preprocess) for p in photo_paths])
    full, features = session.run(None, {"pixels": pixels})
    assert full.shape == (6, 512) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    one = session.run(["embedding"], {"pixels": pixels[2:3]})[0]
    np.testing.assert_allclose(one, full[2:3], atol=1e-5)
    np.testing.assert_allclose(features / np.linalg.norm(features, axis=1, keepdims=True), full, atol=1e-5)
    # normalize=False returns the raw pooled features, like the torch backend.
    torch_backend = Embedder.from_pretrained(folder, backend="torch", device="cpu").backend
    raw = torch_backend(pixels, normalize=False)
    assert compare(OnnxBackend.from_file(out, ModelConfig.load(folder))(pixels, normalize=False),
                   raw)["max_relative_diff"] <= 1e-4


def test_resnet50_acceptance_parity_and_raw_session(tmp_path, photo_paths, user_cache):
    folder = make_model_dir(tmp_path / "r50", architecture="resnet50", input_size=64, resize_size=72)
    with_torch = Embedder.from_pretrained(folder, backend="torch", device="cpu")
    with_onnx = Embedder.from_pretrained(folder, backend="onnx", device="cpu")
    assert with_onnx.backend.name == "onnx" and with_onnx.backend.device == "cpu"
    path = with_onnx.backend.path  # exported once into the cache next to the model
    assert path.parent == folder / ".onnx-cache" and path.is_file()
    onnx.checker.check_model(str(path), full_check=True)
    X_torch, X_onnx = with_torch.embed(photo_paths), with_onnx.embed(photo_paths)
    assert X_onnx.shape == (6, 2048)
    np.testing.assert_allclose(np.linalg.norm(X_onnx, axis=1), 1.0, atol=1e-5)
    assert compare(X_onnx, X_torch)["max_relative_diff"] <= 1e-4
    # A client with onnxruntime alone gets the same vectors for the same pixels.
    pixels = np.stack([load_pixels(p, with_onnx.config.preprocess) for p in photo_paths])
    (raw,) = raw_session(path).run(["embedding"], {"pixels": pixels})
    np.testing.assert_allclose(raw, X_onnx, atol=1e-6)
    assert not user_cache.exists()


def test_example_serves_folder_without_torch(r18, photos_dir, tmp_path):
    folder, out, _ = r18
    photos = tmp_path / "photos"
    shutil.copytree(photos_dir, photos)
    # transparency goes on white as in btembed, and every extension btembed indexes is picked up
    rgba = np.asarray(Image.open(photos / "astronaut.jpg").convert("RGBA")).copy()
    rgba[:, : rgba.shape[1] // 2, 3] = 0
    Image.fromarray(rgba, "RGBA").save(photos / "half-transparent.png")
    Image.open(photos / "coffee.jpg").save(photos / "coffee.bmp")
    vectors = tmp_path / "vectors.npy"
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
            "assert 'torch' not in sys.modules and 'btembed' not in sys.modules, 'imported torch/btembed'")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / "examples" / "onnx_serve.py"), str(out),
                             str(photos), str(vectors)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"images": 8, "dim": 512, "model": "test/resnet18"}
    config = ModelConfig.load(folder)
    pixels = np.stack([load_pixels(p, config.preprocess) for p in sorted(photos.iterdir())])
    ref = OnnxBackend.from_file(out, config)(pixels)
    assert compare(np.load(vectors), ref)["min_cosine"] > 0.9999


def test_folder_model_onnx_is_used_and_its_hash_checked(r18, tmp_path, monkeypatch):
    folder, out, _ = r18
    copy = Path(shutil.copytree(folder, tmp_path / "with-onnx"))
    shutil.copy(out, copy / "model.onnx")
    config = ModelConfig.load(copy)
    monkeypatch.setattr("btembed.backends.onnx_export.export_onnx", lambda *a, **k: pytest.fail("must not export"))
    assert OnnxBackend(copy, config).path == copy / "model.onnx"
    config.files["model.onnx"] = sha256_file(out)
    config.save(copy)
    assert OnnxBackend(copy, ModelConfig.load(copy)).path == copy / "model.onnx"
    config.files["model.onnx"] = "0" * 64
    config.save(copy)
    with pytest.raises(ModelError, match="corrupt"):
        OnnxBackend(copy, ModelConfig.load(copy))


def test_export_cache_reused_and_read_only_falls_back(tmp_path, monkeypatch, user_cache):
    folder = make_model_dir(tmp_path / "m", seed=2)
    config = ModelConfig.load(folder)
    first = OnnxBackend(folder, config).path
    assert first.parent == folder / ".onnx-cache"
    stamp = first.stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr("btembed.backends.onnx_export.export_onnx", lambda *a, **k: pytest.fail("cache not reused"))
        assert OnnxBackend(folder, config).path == first and first.stat().st_mtime_ns == stamp
    assert not list(first.parent.glob("*.tmp"))  # the atomic write left nothing behind
    # A read-only model folder (root ignores chmod, so the write probe is what we simulate).
    readonly = Path(shutil.copytree(folder, tmp_path / "ro", ignore=shutil.ignore_patterns(".onnx-cache")))
    real = onnx_backend._writable
    monkeypatch.setattr(onnx_backend, "_writable", lambda d: readonly not in (d, *d.parents) and real(d))
    fallback = OnnxBackend(readonly, config).path
    assert fallback.parent == user_cache and not (readonly / ".onnx-cache").exists()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(OnnxBackend(readonly, config)(pixels), OnnxBackend(folder, config)(pixels), atol=1e-6)
    # A Hugging Face cache snapshot is never written into, even though it is writable.
    snapshot = Path(shutil.copytree(readonly, tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"))
    assert OnnxBackend(snapshot, config).path == fallback and not (snapshot / ".onnx-cache").exists()
    # A cached export never hides damaged weights: the folder is checked as the torch backend checks it.
    damaged = Path(shutil.copytree(folder, tmp_path / "damaged"))
    with open(damaged / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    assert (damaged / ".onnx-cache" / first.name).is_file()
    with pytest.raises(ModelError, match="corrupt"):
        OnnxBackend(damaged, config)


def test_int8_file_close_to_fp32_and_run_when_forced(tmp_path, photos_dir, photo_paths):
    """A plain int8 file (quantize_int8) keeps each vector's direction; precision="int8" runs the folder's file.
    The CLI export with its parity record is tested in test_int8.py."""
    folder = make_model_dir(tmp_path / "m", seed=3)
    config = ModelConfig.load(folder)
    out = quantize_int8(OnnxBackend(folder, config, device="cpu").path, tmp_path / "int8.onnx", photos_dir, config)
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10
    meta = read_metadata(out)
    assert meta["input_size"] == "64" and "int8" in meta["quantization"] and meta["calibration_images"] == "6"
    pixels = np.stack([load_pixels(p, config.preprocess) for p in photo_paths])
    int8 = raw_session(out).run(["embedding"], {"pixels": pixels})[0]
    fp32 = Embedder.from_pretrained(folder, backend="torch", device="cpu").backend(pixels)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert compare(int8, fp32)["min_cosine"] > 0.98
    # The folder's model.int8.onnx is what precision="int8" runs (backend "auto" routes int8 to onnx).
    shutil.copy(out, folder / "model.int8.onnx")
    backend = Embedder.from_pretrained(folder, precision="int8", device="cpu").backend
    assert backend.name == "onnx" and backend.path == folder / "model.int8.onnx"
    np.testing.assert_allclose(backend(pixels), int8, atol=1e-6)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--onnx", str(tmp_path / "x.onnx"), "--int8"])
    assert e.value.code == 2
    folder = make_model_dir(tmp_path / "m")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(folder), "--onnx", str(tmp_path / "x.onnx"), "--int8", "--calibration",
                 str(empty)]) == 1
    assert "has 0 readable images; int8 needs at least 200" in capsys.readouterr().err
    assert main(["export", str(folder), "--onnx", str(tmp_path / "x.onnx"), "--opset", "13"]) == 1
    assert not (tmp_path / "x.onnx").exists()
    capsys.readouterr()
    # an unwritable destination is refused in one line before any export work
    assert main(["export", str(folder), "--onnx", str(empty)]) == 1
    assert f"{empty} is a folder; give the ONNX file's path" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", str(folder), "--onnx", str(blocker / "sub" / "x.onnx")]) == 1
    assert f"cannot create the folder {blocker / 'sub'}" in capsys.readouterr().err


def test_auto_backend_choice():
    assert auto_backend("cpu", "fp32") == "onnx"  # measured faster at parity: docs/onnx.md
    assert auto_backend("cpu", "bf16") == "torch" and auto_backend("cuda", "fp32") == "torch"
    assert auto_backend("auto", "int8") == "onnx"


def test_precision_and_providers(tiny_model_dir, monkeypatch):
    with pytest.raises(ModelError, match="bf16"):
        OnnxBackend(tiny_model_dir, ModelConfig.load(tiny_model_dir), precision="bf16")
    with pytest.raises(ModelError, match=f"make one with `btembed export {tiny_model_dir} --onnx "):
        OnnxBackend(tiny_model_dir, ModelConfig.load(tiny_model_dir), precision="int8")
    # a shared folder (package, hub cache snapshot) is not written into: the message says to copy it first
    with monkeypatch.context() as patch:
        patch.setattr(onnx_backend, "shared_location", lambda folder: "a Hugging Face cache snapshot")
        with pytest.raises(ModelError, match=r"has no model.int8.onnx; copy the model folder somewhere of yours"):
            OnnxBackend(tiny_model_dir, ModelConfig.load(tiny_model_dir), precision="int8")
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert pick_providers("auto", gpu) == gpu
    assert pick_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert pick_providers("cpu", gpu) == ["CPUExecutionProvider"]
    assert pick_providers("cuda:1", gpu[1:]) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        pick_providers("cuda", ["CPUExecutionProvider"])


def test_cached_backend_does_not_import_torch(r18, tmp_path):
    folder, out, _ = r18
    copy = Path(shutil.copytree(folder, tmp_path / "m"))
    shutil.copy(out, copy / "model.onnx")
    code = ("import sys, numpy as np; from btembed.backends import load_backend; "
            "from btembed.config import ModelConfig; "
            f"b = load_backend('onnx', __import__('pathlib').Path({str(copy)!r}), ModelConfig.load({str(copy)!r}));"
            "v = b(np.zeros((2, 64, 64, 3), np.uint8)); assert v.shape == (2, 512); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "BTEMBED_CACHE": str(tmp_path / "c")})
    assert result.returncode == 0, result.stderr


def test_resaving_weights_keeps_a_matching_onnx_and_deletes_a_stale_one(r18, tmp_path):
    from btembed import Encoder

    folder, out, _ = r18
    model = tmp_path / "model"
    shutil.copytree(folder, model)
    shutil.copy(out, model / "model.onnx")  # exported from exactly these weights
    Encoder.from_pretrained(model).save_pretrained(model)  # same weights again (e.g. new card or metrics)
    assert ModelConfig.load(model).files["model.onnx"] == sha256_file(model / "model.onnx")
    # Other weights into the same folder: the old export would give the old model's vectors, so it goes.
    with pytest.warns(UserWarning, match="exported from other weights"):
        make_model_dir(model, seed=2)
    assert not (model / "model.onnx").exists() and "model.onnx" not in ModelConfig.load(model).files


def test_saving_the_same_weights_gives_the_same_bytes(r18, tmp_path):
    # config.json and the registry pin model.safetensors by sha256, so a re-save must not change it.
    from btembed import Encoder

    model = tmp_path / "model"
    shutil.copytree(r18[0], model)
    encoder, digests = Encoder.from_pretrained(model), set()
    for _ in range(12):  # the old two-key metadata came out in either order: 12 equal saves by luck is 1 in 2048
        encoder.save_pretrained(model)
        digests.add(sha256_file(model / "model.safetensors"))
    assert len(digests) == 1


def test_folder_model_onnx_of_other_weights_or_unstamped_is_refused(r18, tmp_path, monkeypatch):
    folder, out, _ = r18  # out was exported from seed-1 weights
    other = make_model_dir(tmp_path / "other", seed=2)
    shutil.copy(out, other / "model.onnx")
    monkeypatch.setattr("btembed.backends.onnx_export.export_onnx", lambda *a, **k: pytest.fail("must not export"))
    with pytest.raises(ModelError, match=r"model\.onnx was exported from other weights.*btembed export"):
        OnnxBackend(other, ModelConfig.load(other))
    # No weights_sha256 in the metadata: refused unless config.json vouches for the file's own sha256.
    model = onnx.load(str(out))
    del model.metadata_props[:]
    bare = Path(shutil.copytree(folder, tmp_path / "bare"))
    onnx.save_model(model, str(bare / "model.onnx"))
    with pytest.raises(ModelError, match="does not say which weights"):
        OnnxBackend(bare, ModelConfig.load(bare))
    config = ModelConfig.load(bare)
    config.files["model.onnx"] = sha256_file(bare / "model.onnx")
    config.save(bare)
    assert OnnxBackend(bare, ModelConfig.load(bare)).path == bare / "model.onnx"


def test_cached_export_of_other_weights_is_rebuilt(r18, tmp_path):
    folder = make_model_dir(tmp_path / "m", seed=2)
    config = ModelConfig.load(folder)
    cached = onnx_backend.cache_candidates(folder, config)[0]
    cached.parent.mkdir(parents=True)
    shutil.copy(r18[1], cached)  # a seed-1 export sitting under this model's cache key
    backend = OnnxBackend(folder, config, device="cpu")
    assert backend.path == cached
    assert read_metadata(cached)["weights_sha256"] == config.files["model.safetensors"]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    torch_vectors = Embedder.from_pretrained(folder, backend="torch", device="cpu").backend(pixels)
    assert compare(backend(pixels), torch_vectors)["min_cosine"] > 0.9999
