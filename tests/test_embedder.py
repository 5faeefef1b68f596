"""Encoder folders and Embedder: shapes, unit rows, invariance to batch size and order, mixed inputs, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from btembed import Embedder, Encoder, ImageError, ModelError
from btembed.sources import locate
from btembed.images import open_image
from btembed.preprocess import load_pixels

from conftest import make_model_dir


@pytest.fixture(scope="module")
def r18_224(tmp_path_factory):
    """A random-init resnet18 folder with the default ImageNet preprocessing (224 px)."""
    return make_model_dir(tmp_path_factory.mktemp("m") / "r18", input_size=224, resize_size=256)


def test_model_folder_layout_and_torchvision_keys(r18_224):
    config = json.loads((r18_224 / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["embedding_dim"] == 512
    assert config["preprocess"]["input_size"] == 224 and config["preprocess"]["interpolation"] == "bilinear"
    assert len(config["files"]["model.safetensors"]) == 64
    assert (r18_224 / "README.md").read_text().startswith("---\n")
    result = torchvision.models.resnet18().load_state_dict(load_file(r18_224 / "model.safetensors"), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_embed_six_photos_unit_rows_and_invariance(r18_224, photo_paths):
    emb = Embedder.from_pretrained(r18_224, backend="torch", device="cpu")
    X = emb.embed(photo_paths, batch_size=64)
    assert X.shape == (6, 512) and X.dtype == np.float32 and emb.dim == 512
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    order = [3, 0, 5, 1, 4, 2]
    Y = emb.embed([photo_paths[i] for i in order], batch_size=4)
    assert np.abs(Y - X[order]).max() <= 1e-4
    Z = emb.embed(photo_paths, batch_size=1, num_workers=2)
    assert np.abs(Z - X).max() <= 1e-4
    # Distinct photos give distinct vectors (nothing is cached by position).
    assert np.abs(X[0] - X[1]).max() > 1e-3


def test_mixed_items_and_matching_encoder_forward(tiny_model_dir, photo_paths):
    emb = Embedder.from_pretrained(tiny_model_dir, device="cpu")
    # Paths decode JPEGs in draft mode (reduced scale); give PIL/array items the same decode to compare exactly.
    size = emb.config.preprocess.resize_size
    pil = open_image(photo_paths[1], min_size=size)
    pixels = np.asarray(open_image(photo_paths[2], min_size=size))
    X = emb.embed([photo_paths[0], pil, pixels])
    ref = emb.embed([photo_paths[0], photo_paths[1], photo_paths[2]])
    assert np.abs(X - ref).max() <= 1e-4
    # A full-resolution decode differs only slightly from the draft-mode one.
    full = emb.embed([Image.open(photo_paths[1])])
    assert float(full[0] @ X[1]) > 0.99
    # Independent path: Encoder.from_pretrained + explicit normalisation gives the same vector.
    encoder = Encoder.from_pretrained(tiny_model_dir)
    pre = encoder.config.preprocess
    x = torch.from_numpy(load_pixels(photo_paths[0], pre)).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        f = torch.nn.functional.normalize(encoder(x), dim=1).numpy()
    assert np.abs(f - X[:1]).max() <= 1e-4
    raw = emb.embed(photo_paths[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_bad_file_raises_in_embed_but_stream_carries_on(tiny_model_dir, photo_paths, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    emb = Embedder.from_pretrained(tiny_model_dir, device="cpu")
    with pytest.raises(ImageError, match="broken.jpg"):
        emb.embed([photo_paths[0], bad, photo_paths[1]])
    results = list(emb.embed_files([photo_paths[0], bad, photo_paths[1]], batch_size=2, num_workers=1))
    assert [type(r).__name__ for _, r in results] == ["ndarray", "ImageError", "ndarray"]
    assert results[1][0] == bad and "broken.jpg" in str(results[1][1])


def test_bf16_precision_is_close_to_fp32(tiny_model_dir, photo_paths):
    fp32 = Embedder.from_pretrained(tiny_model_dir, device="cpu").embed(photo_paths)
    bf16 = Embedder.from_pretrained(tiny_model_dir, device="cpu", precision="bf16").embed(photo_paths)
    cos = (fp32 * bf16).sum(1)
    assert cos.min() > 0.99


def test_corrupt_weights_are_named(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.safetensors.*corrupt"):
        Embedder.from_pretrained(copy)


def test_resolution_errors_are_one_sentence(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        Embedder.from_pretrained(tmp_path)
    with pytest.raises(ModelError, match="neither a folder"):
        locate("./does/not/exist")
    with pytest.raises(ModelError, match="unknown device"):
        Embedder.from_pretrained(tmp_path if False else make_model_dir(tmp_path / "m"), device="tpu9")


def test_load_async_gives_the_same_vectors_and_defers_backend_errors(tiny_model_dir, photo_paths):
    sync = Embedder.from_pretrained(tiny_model_dir, backend="torch")
    lazy = Embedder.from_pretrained(tiny_model_dir, backend="torch", load_async=True)
    assert lazy.dim == sync.dim  # config is read up front, only the backend loads in the background
    np.testing.assert_allclose(lazy.embed(photo_paths[:4], num_workers=2), sync.embed(photo_paths[:4]), atol=1e-5)
    # A backend error (here: a precision torch does not run) is raised at first use, as the same ModelError.
    broken = Embedder.from_pretrained(tiny_model_dir, backend="torch", precision="int8", load_async=True)
    with pytest.raises(ModelError):
        broken.embed(photo_paths[:1])
