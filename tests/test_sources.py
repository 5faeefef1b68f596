"""The authors' ResNet-50s by name: a loopback server stands in for their URLs (through BTEMBED_MODEL_MIRROR).

Each format loads and embeds exactly like torchvision's resnet50 with the same weights; the cache answers the
second call without a connection; bad downloads are refused in one line and leave nothing; a dropped download
resumes; offline machines are told how to carry the file in.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from btembed import Embedder, ModelError
from btembed import download as download_module
from btembed import sources
from btembed.modelfiles import sha256_file

from conftest import NO_NETWORK_CLI, skimage_photos

R50, VICREG, SIMSIAM = "btembed/r50", "btembed/vicreg-r50", "btembed/simsiam-r50"
REAL_REGISTRY = json.loads((Path(sources.__file__).parent / "registry.json").read_text())
PATHS = {name: urlsplit(REAL_REGISTRY["models"][name]["source"]["url"]).path
         for name in (R50, VICREG, SIMSIAM)}


# ---------------------------------------------------------------- synthesized files in the authors' three layouts

def random_trunk(seed: int) -> dict:
    """A random torchvision ResNet-50 trunk (no fc) with non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)
    return model.state_dict()


def simsiam_checkpoint(trunk: dict) -> dict:
    """The layout of SimSiam's checkpoint_0099.pth.tar: DDP-prefixed encoder whose fc is the projector, a
    predictor, SGD state (small shapes: the converter drops all of it)."""
    state = {f"module.encoder.{k}": v for k, v in trunk.items()}
    state.update({"module.encoder.fc.0.weight": torch.randn(8, 2048), "module.encoder.fc.1.weight": torch.ones(8),
                  "module.encoder.fc.1.running_var": torch.ones(8), "module.predictor.0.weight": torch.randn(4, 8),
                  "module.predictor.3.bias": torch.zeros(8)})
    optimizer = {"state": {0: {"momentum_buffer": torch.randn(3)}},
                 "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "fix_lr": False,
                                   "params": [0, 1]}]}
    return {"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": optimizer}


class Payload:
    """Creates a folder when unpickled: the stand-in for code hidden in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (bytes served, trunk state dict) for the three layouts (built once: ~94 MB each)."""
    folder = tmp_path_factory.mktemp("authors")
    made = {}
    for name, seed in ((R50, 1), (VICREG, 2), (SIMSIAM, 3)):
        trunk = random_trunk(seed)
        path = folder / f"{seed}.pth"
        torch.save(simsiam_checkpoint(trunk) if name == SIMSIAM else trunk, path)
        made[name] = (path.read_bytes(), trunk)
        path.unlink()
    return made


# ---------------------------------------------------------------- the loopback server

class Server:
    """Serves path -> (body, mode); modes: ok (honours Range), cut_once, short, html, or an HTTP status code."""

    def __init__(self):
        self.routes, self.log, self.cut = {}, [], set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.log.append((self.path, self.headers.get("Range")))
                body, mode = outer.routes.get(self.path, (b"", 404))
                if isinstance(mode, int):
                    self.send_error(mode)
                    return
                if mode == "html":
                    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
                    self._send(200, page, {"Content-Type": "text/html; charset=utf-8"})
                    return
                start = int(self.headers["Range"][6:].rstrip("-")) if self.headers.get("Range") else 0
                if mode == "short" or (mode == "cut_once" and self.path not in outer.cut):
                    outer.cut.add(self.path)
                    # Announces the whole file, sends half of it, hangs up (a short server ignores Range too).
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                if start:
                    self._send(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
                else:
                    self._send(200, body, {})

            def _send(self, status, payload, headers):
                self.send_response(status)
                headers = {"Content-Type": "application/octet-stream", **headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                view = memoryview(payload)
                for i in range(0, len(view), 1 << 20):
                    self.wfile.write(view[i:i + (1 << 20)])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.mirror = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, name_or_path: str, body: bytes, mode="ok") -> str:
        """Serve body where the mirror maps the registry URL of name (or a raw path); returns that path."""
        path = "/mirror" + PATHS.get(name_or_path, name_or_path)
        self.routes[path] = (body, mode)
        self.cut.discard(path)
        return path

    def requests(self, path: str | None = None) -> list:
        return [r for r in self.log if path is None or r[0] == path]


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def make_registry(tmp_path: Path, pinned: bytes, extra: dict | None = None) -> Path:
    """The real registry's three entries, with VICReg pinned to the synthesized file instead of the real one."""
    registry = json.loads(json.dumps(REAL_REGISTRY))
    registry["models"][VICREG]["source"].update(sha256=_sha256(pinned), size=len(pinned))
    registry["models"].update(extra or {})
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(registry))
    return path


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """A fresh btembed cache, the mirror, no proxies, no retry pauses."""
    monkeypatch.setenv("BTEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BTEMBED_MODEL_MIRROR", server.mirror)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BTEMBED_REGISTRY", raising=False)  # the real registry unless a test sets its own
    monkeypatch.setattr(download_module, "BACKOFF_SECONDS", 0.0)
    server.log.clear()
    return tmp_path


def one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


def cache_left(env: Path) -> list[str]:
    """Everything left in btembed's model cache (the lock folder aside)."""
    models = env / "cache" / "models"
    return sorted(str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()) if models.exists() else []


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, files, server):
    """One cache with all three names fetched through the server (module scope: fetching costs ~94 MB each)."""
    base = tmp_path_factory.mktemp("fetched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BTEMBED_CACHE", str(base / "cache"))
        mp.setenv("BTEMBED_MODEL_MIRROR", server.mirror)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.setenv("BTEMBED_REGISTRY", str(make_registry(base, files[VICREG][0])))
        for name, (body, _) in files.items():
            server.serve(name, body)
        folders = {name: sources.fetch(name) for name in files}
        yield base, folders, mp


def torchvision_vectors(trunk: dict, image: Image.Image) -> np.ndarray:
    """The reference: torchvision resnet50 + the same weights, fc=Identity, Resize 256 / CenterCrop 224 / ImageNet."""
    from torchvision import transforms

    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()
    model.load_state_dict(trunk)
    t = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with torch.no_grad():
        return torch.nn.functional.normalize(model.eval()(t(image)[None]), dim=1).numpy()


# ---------------------------------------------------------------- each name works

@pytest.mark.parametrize("name", [R50, VICREG, SIMSIAM])
def test_each_name_embeds_like_torchvision_resnet50(fetched, files, name, monkeypatch):
    base, folders, _ = fetched
    photo = skimage_photos()["chelsea"]  # 300 x 451: resized and cropped on the way
    config = json.loads((folders[name] / "config.json").read_text())
    assert config["architecture"] == "resnet50" and config["source"]["url"].endswith(PATHS[name])
    assert config["source"]["sha256"] == _sha256(files[name][0]) and config["license"] in ("mit", "cc-by-nc-4.0")
    got = Embedder.from_pretrained(name, backend="torch", device="cpu").embed([photo])
    want = torchvision_vectors(files[name][1], Image.fromarray(photo))
    assert np.abs(got - want).max() <= 1e-5
    card = (folders[name] / "README.md").read_text()
    assert "Reported by the authors, not measured by btembed" in card and config["source"]["sha256"] in card


def test_second_call_makes_no_connection_and_models_says_cached(fetched, server, monkeypatch, capsys):
    base, folders, _ = fetched
    before = len(server.requests())

    def refuse(*args, **kwargs):
        raise AssertionError("network connection attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in folders:
        assert Embedder.from_pretrained(name, backend="torch", device="cpu").folder == folders[name]
    assert len(server.requests()) == before
    from btembed.commands.models import availability

    assert {availability(n, sources.registry_entry(n))[0] for n in folders} == {"cached"}


def test_onnx_export_of_the_cached_model(fetched, files):
    base, folders, _ = fetched
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    onnx = Embedder.from_pretrained(R50, backend="onnx", device="cpu")
    torch_ = Embedder.from_pretrained(R50, backend="torch", device="cpu")
    assert onnx.backend.path.is_file() and not str(onnx.backend.path).startswith(str(folders[R50]))
    assert np.abs(onnx.backend(pixels) - torch_.backend(pixels)).max() < 1e-4


def test_licence_and_trust_on_first_use_are_said_once(env, files, server, monkeypatch, capsys):
    monkeypatch.setenv("BTEMBED_REGISTRY", str(make_registry(env, files[VICREG][0])))
    server.serve(SIMSIAM, files[SIMSIAM][0])
    folder = sources.fetch(SIMSIAM)
    err = capsys.readouterr().err
    assert "CC-BY-NC-4.0".lower() in err.lower() and "non-commercial use only" in err
    assert "trusted on first use" in err and _sha256(files[SIMSIAM][0]) in err
    trust = json.loads((env / "cache" / "models" / "btembed--simsiam-r50" / "trusted.json").read_text())
    assert trust["sha256"] == _sha256(files[SIMSIAM][0])
    assert sources.fetch(SIMSIAM) == folder and capsys.readouterr().err == ""  # said once
    # A later download that differs (the converted folder gone, the trust record kept) is refused.
    import shutil

    shutil.rmtree(folder)
    server.serve(SIMSIAM, b"\x80\x02" + os.urandom(4096))
    with pytest.raises(ModelError, match="trusted on first use") as e:
        sources.fetch(SIMSIAM)
    one_line(e.value)
    assert cache_left(env) == ["btembed--simsiam-r50/trusted.json"]


def test_two_fetches_at_once_download_once(env, files, server, monkeypatch):
    monkeypatch.setenv("BTEMBED_REGISTRY", str(make_registry(env, files[VICREG][0])))
    path = server.serve(VICREG, files[VICREG][0])
    results = []
    threads = [threading.Thread(target=lambda: results.append(sources.fetch(VICREG))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert len(server.requests(path)) == 1


# ---------------------------------------------------------------- refusals: one line, nothing left

def test_the_real_vicreg_pin_refuses_a_synthesized_file(env, files, server):
    pin = REAL_REGISTRY["models"][VICREG]["source"]
    body = files[VICREG][0][: pin["size"]].ljust(pin["size"], b"\0")  # the right size, other bytes
    server.serve(VICREG, body)
    with pytest.raises(ModelError, match=f"registry pins {pin['sha256']}") as e:
        Embedder.from_pretrained(VICREG)
    assert "nothing was kept" in one_line(e.value)
    assert cache_left(env) == []


@pytest.mark.parametrize("mode, message", [
    ("short", "keeps sending an incomplete file"),
    ("html", "sent a web page"),
    (404, "HTTP 404"),
    (500, "HTTP 500"),
])
def test_bad_downloads_are_refused_and_leave_nothing(env, files, server, mode, message):
    path = server.serve(R50, os.urandom(300_000), mode)
    with pytest.raises(ModelError, match=message) as e:
        Embedder.from_pretrained(R50)
    assert "models fetch btembed/r50 --from FILE" in one_line(e.value)
    assert cache_left(env) == []
    if mode in ("short", 500):
        assert len(server.requests(path)) == download_module.ATTEMPTS  # retried before refusing


def test_a_checkpoint_with_a_pickled_object_is_refused_unread(env, server, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "epoch": Payload(marker)}, evil)
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))  # the payload is live when unpickled
    assert (tmp_path / "control").is_dir()
    server.serve(R50, evil.read_bytes())
    with pytest.raises(ModelError, match="refused unread") as e:
        Embedder.from_pretrained(R50)
    one_line(e.value)
    assert not marker.exists() and cache_left(env) == []


def test_a_dropped_connection_resumes_on_the_next_call(env, files, server, monkeypatch):
    monkeypatch.setattr(download_module, "ATTEMPTS", 1)
    body = files[R50][0]
    path = server.serve(R50, body, "cut_once")
    with pytest.raises(ModelError, match="the next try resumes there") as e:
        sources.fetch(R50)
    one_line(e.value)
    part = env / "cache" / "models" / "btembed--r50" / "resnet50.pth.part"
    assert part.stat().st_size == len(body) // 2
    folder = sources.fetch(R50)
    assert server.requests(path)[-1] == (path, f"bytes={len(body) // 2}-")
    assert json.loads((folder / "config.json").read_text())["source"]["sha256"] == _sha256(body)
    assert not part.exists()


def test_offline_says_how_to_carry_the_file_in(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BTEMBED_CACHE": str(tmp_path / "cache")}
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    out = subprocess.run([sys.executable, "-c", NO_NETWORK_CLI, "embed", str(tmp_path / "a.png"), "-o",
                          str(tmp_path / "v"), "--model", R50], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "offline mode is on" in out.stderr and "`btembed models fetch btembed/r50 --from FILE`" in out.stderr
    assert "network connection attempted" not in out.stderr


def test_models_fetch_from_a_file(env, files, tmp_path, monkeypatch, capsys):
    from btembed.cli import main

    # The real VICReg pin against a file of the right size and other bytes: refused, the file left alone.
    wrong = tmp_path / "resnet50.pth"
    with open(wrong, "wb") as f:
        f.truncate(REAL_REGISTRY["models"][VICREG]["source"]["size"])
    assert main(["models", "fetch", VICREG, "--from", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "registry pins c843e765" in err and wrong.exists()
    assert cache_left(env) == []
    # The right file (a test registry pins the synthesized one) is verified, converted and cached offline.
    right = tmp_path / "vicreg.pth"
    right.write_bytes(files[VICREG][0])
    monkeypatch.setenv("BTEMBED_REGISTRY", str(make_registry(env, files[VICREG][0])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "fetch", VICREG, "--from", str(right)]) == 0
    assert right.exists() and Embedder.from_pretrained(VICREG, backend="torch").config.source["sha256"] == \
        sha256_file(right)


# ---------------------------------------------------------------- small facts

def test_vicreg_padding_equals_torchvision_padding():
    """The authors' ResNet pads 1 pixel, then conv1 pads 2: the same numbers as torchvision's padding 3."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 3, 23, 29), torch.randn(8, 3, 7, 7)
    theirs = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), weight, stride=2, padding=2)
    torchvision_ = torch.nn.functional.conv2d(x, weight, stride=2, padding=3)
    assert theirs.shape == torchvision_.shape
    assert torch.equal(theirs, torchvision_)


def test_mirror_replaces_scheme_and_host(monkeypatch):
    url = "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth"
    monkeypatch.delenv("BTEMBED_MODEL_MIRROR", raising=False)
    assert download_module.mirrored(url) == url
    monkeypatch.setenv("BTEMBED_MODEL_MIRROR", "http://models.internal:8080/prefix/")
    assert download_module.mirrored(url) == "http://models.internal:8080/prefix/barlowtwins/ljng/resnet50.pth"
    monkeypatch.setenv("BTEMBED_MODEL_MIRROR", "models.internal")
    with pytest.raises(ModelError, match="BTEMBED_MODEL_MIRROR"):
        download_module.mirrored(url)


# ---------------------------------------------------------------- names and files a user mistypes

@pytest.mark.parametrize("name, offline, hint", [
    ("btembed/r5", "", "did you mean btembed/r50?"),
    ("btembed/vicreg", "1", "did you mean btembed/vicreg-r50?"),
])
def test_a_mistyped_registry_name_is_named_before_any_hub_attempt(tmp_path, name, offline, hint):
    env = {**os.environ, "HF_HUB_OFFLINE": offline, "BTEMBED_CACHE": str(tmp_path / "cache"),
           "HF_HUB_CACHE": str(tmp_path / "hf")}
    env.pop("BTEMBED_REGISTRY", None)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    out = subprocess.run([sys.executable, "-c", NO_NETWORK_CLI, "embed", str(tmp_path / "a.png"), "-o",
                          str(tmp_path / "v"), "--model", name], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"btembed embed: error: {name} is not a registry name; {hint}"], out.stderr


def test_a_name_outside_the_btembed_namespace_still_goes_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("BTEMBED_REGISTRY", raising=False)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        sources.locate("someorg/r5")


def test_models_fetch_from_a_folder_says_it_is_a_folder(tmp_path, monkeypatch, capsys):
    from btembed.cli import main

    monkeypatch.setenv("BTEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BTEMBED_REGISTRY", raising=False)
    (tmp_path / "photos").mkdir()
    assert main(["models", "fetch", R50, "--from", str(tmp_path / "photos")]) == 1
    assert f"{tmp_path / 'photos'} is a folder, not a file" in capsys.readouterr().err


@pytest.mark.parametrize("junk", [b"PK\x03\x04" + bytes(range(256)) * 2, b"hello, not a checkpoint" * 20])
def test_junk_checkpoint_says_what_the_file_must_be(tmp_path, junk):
    from btembed.convert import ConvertError, load_checkpoint

    (tmp_path / "junk.pth").write_bytes(junk)
    with pytest.raises(ConvertError) as e:
        load_checkpoint(tmp_path / "junk.pth")
    assert str(e.value) == (f"{tmp_path / 'junk.pth'} is not a readable PyTorch checkpoint; give the complete file "
                            "torch.save wrote with the model's weights (such as the authors' resnet50.pth)")
