"""The decode pipeline: thread-pool decoding (order, errors, bounded read-ahead, early stop) and the device
(TorchCodec, else torchvision, decode_jpeg) path, which must give vectors close to the Pillow path."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from btembed import Embedder, ModelError
from btembed.embedder import _DecodeDataset, _threaded_batches
from btembed.preprocess import PreprocessConfig, load_pixels


@pytest.fixture(scope="module")
def onnx_embedder(tiny_model_dir):
    return Embedder.from_pretrained(tiny_model_dir, backend="onnx", device="cpu")


def test_thread_pool_matches_inline_and_dataloader(onnx_embedder, photo_paths, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    items = [photo_paths[0], bad, *photo_paths[1:]]
    inline = list(onnx_embedder.embed_files(items, batch_size=3, num_workers=0))
    assert onnx_embedder.decode_pool == "thread"
    threaded = list(onnx_embedder.embed_files(items, batch_size=3, num_workers=2))
    emb = Embedder(onnx_embedder.backend, onnx_embedder.config)
    emb.decode_pool = "process"
    processes = list(emb.embed_files(items, batch_size=3, num_workers=2))
    for run in (threaded, processes):
        assert [item for item, _ in run] == items
        assert "broken.jpg" in str(run[1][1])
        got = np.stack([v for _, v in run if isinstance(v, np.ndarray)])
        want = np.stack([v for _, v in inline if isinstance(v, np.ndarray)])
        assert got.shape == (6, 512) and np.abs(got - want).max() <= 1e-5


class _Counting(_DecodeDataset):
    """Records how many items were decoded, and the nice value of the threads that decoded them."""

    def __init__(self, items, preprocess):
        super().__init__(items, preprocess)
        self.decoded, self.nice = 0, set()

    def __getitem__(self, i):
        import os
        import threading

        self.decoded += 1
        self.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return super().__getitem__(i)


def test_thread_pool_reads_ahead_a_bounded_number_of_batches(photo_paths):
    cfg = PreprocessConfig(input_size=32, resize_size=36)
    data = _Counting([photo_paths[i % 6] for i in range(60)], cfg)
    batches = _threaded_batches(data, batch_size=4, workers=2, prefetch=2)
    first = next(batches)
    assert [i for i, _, _ in first] == [0, 1, 2, 3]
    # The first batch plus at most `prefetch` batches behind it: memory follows batch size, not folder size.
    assert data.decoded <= 3 * 4
    batches.close()  # an early stop cancels what is queued instead of decoding the rest of the folder
    assert data.decoded <= 3 * 4
    rest = list(_threaded_batches(data, batch_size=7, workers=3, prefetch=1))
    assert [i for b in rest for i, _, _ in b] == list(range(60))


def test_decode_threads_can_yield_to_the_model(photo_paths):
    import os

    own = os.getpriority(os.PRIO_PROCESS, 0)
    data = _Counting([photo_paths[i % 6] for i in range(8)], PreprocessConfig(input_size=32, resize_size=36))
    out = list(_threaded_batches(data, batch_size=4, workers=2, prefetch=1, nice=3))
    assert [i for b in out for i, _, _ in b] == list(range(8))
    assert data.nice == {min(19, own + 3)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the calling thread keeps its priority


def test_device_decode_is_close_to_pillow(tiny_model_dir, photo_paths, tmp_path):
    torch_emb = Embedder.from_pretrained(tiny_model_dir, backend="torch", device="cpu")
    png = tmp_path / "photo1-copy.png"
    Image.open(photo_paths[1]).save(png)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    items = [*photo_paths, png, bad]
    ref = list(torch_emb.embed_files(items, batch_size=4, num_workers=0))
    dev = Embedder(torch_emb.backend, torch_emb.config)
    dev.decode_pool = "device"
    got = list(dev.embed_files(items, batch_size=4))
    assert [item for item, _ in got] == items and "broken.jpg" in str(got[-1][1])
    X = np.stack([v for _, v in ref[:-1]])
    Y = np.stack([v for _, v in got[:-1]])
    cos = X @ Y.T
    # Each image's device vector is close to its Pillow vector, and closer to it than to any other photo. The PNG
    # holds photo 1's pixels, so it and photo 1 are ranked only against the distinct photos (the two copies are
    # equal to ~1e-7, and which of them comes first is float noise).
    assert np.diag(cos).min() > 0.99
    n = len(photo_paths)
    off = cos[:n, :n] - np.diag(np.full(n, np.inf))
    assert (np.diag(cos)[:n, None] > off).all()
    # The pixels themselves: full-scale decode + tensor resize vs Pillow's draft decode + resize.
    from btembed.device_decode import DeviceDecoder

    cfg = torch_emb.config.preprocess
    tensors = DeviceDecoder(cfg, "cpu")(photo_paths)
    for path, t in zip(photo_paths, tensors):
        a = t.numpy().astype(np.float32)
        b = load_pixels(path, cfg).astype(np.float32)
        assert a.shape == b.shape == (cfg.input_size, cfg.input_size, 3)
        assert np.abs(a - b).mean() < 6.0


def test_device_decode_keeps_exif_rotation_and_both_decoders_agree(photo_paths, tmp_path, monkeypatch):
    pytest.importorskip("torchcodec")
    from btembed import device_decode

    cfg = PreprocessConfig(input_size=48, resize_size=56)
    image = Image.open(photo_paths[0])
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF orientation: shown rotated 90° clockwise
    rotated = tmp_path / "rotated.jpg"
    image.save(rotated, exif=exif)
    decoder = device_decode.DeviceDecoder(cfg, "cpu")
    assert device_decode._torchcodec_decode_jpeg is not None
    got = decoder([rotated, *photo_paths])
    # TorchCodec ignores EXIF orientation, so the rotated file must take the Pillow path, which applies it.
    np.testing.assert_array_equal(got[0].numpy(), load_pixels(rotated, cfg))
    assert not np.array_equal(got[0].numpy(), got[1].numpy())
    # torchvision's decoder (deprecated, the fallback without TorchCodec) gives the same pixels.
    monkeypatch.setattr(device_decode, "_torchcodec_decode_jpeg", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fallback = decoder(photo_paths)
    for a, b in zip(got[1:], fallback):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_device_decode_needs_the_torch_backend(onnx_embedder, photo_paths):
    emb = Embedder(onnx_embedder.backend, onnx_embedder.config)
    emb.decode_pool = "device"
    with pytest.raises(ModelError, match="torch backend"):
        emb.embed(photo_paths[:1])
