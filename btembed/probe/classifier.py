"""Saved linear classifiers: classifier.safetensors + labels.json + classifier.json (the features they expect)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BtembedError, ModelError
from ..modelfiles import sha256_file
from ..version import __version__
from .protocol import LinearClassifier

WEIGHTS = "classifier.safetensors"
LABELS = "labels.json"
META = "classifier.json"
FORMAT = "btembed-linear-classifier/1"


def current_umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_save_target(folder: str | os.PathLike) -> None:
    """Refuse a --save target that save() could not create, before any embedding is spent on it."""
    path = Path(folder).expanduser()
    for at in (path, *path.parents):
        if at.exists():
            if not at.is_dir():
                what = f"{at} is a file" if at == path else f"{at}, a parent of {path}, is a file"
                raise BtembedError(f"{what}; give --save a new folder (or a classifier folder to replace)")
            if not os.access(at, os.W_OK | os.X_OK):
                raise BtembedError(f"{at} is not writable; give --save a folder you can write")
            return


@dataclass
class SavedClassifier:
    """A linear head, its class names, and the identity of the features it was trained on."""

    head: LinearClassifier
    classes: list
    features: dict  # kind, model, dim, sha256, (architecture), ref: how to load the model again
    info: dict  # training provenance: dataset, images per class, protocol

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the three files (each via a temporary name, so a crash leaves no half-written classifier)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.head.weight, "bias": self.head.bias, "mean": self.head.mean, "std": self.head.std}
        tmp = folder / (WEIGHTS + ".tmp")
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT})
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors creates it 0600; the JSON files beside it follow the umask
        os.replace(tmp, folder / WEIGHTS)
        meta = {"format": FORMAT, "btembed_version": __version__, "features": self.features,
                "weight_decay": self.head.weight_decay, "num_classes": len(self.classes),
                "files": {WEIGHTS: sha256_file(folder / WEIGHTS)}, **self.info}
        for name, obj in ((LABELS, {"classes": list(self.classes)}), (META, meta)):
            tmp = folder / (name + ".tmp")
            tmp.write_text(json.dumps(obj, indent=2) + "\n")
            os.replace(tmp, folder / name)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SavedClassifier":
        """Read and check a classifier folder written by save()."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / META).is_file():
            raise BtembedError(f"{folder} is not a btembed classifier folder (no {META}); "
                               "create one with btembed probe DIR --save FOLDER")
        try:
            meta = json.loads((folder / META).read_text())
            classes = json.loads((folder / LABELS).read_text())["classes"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise BtembedError(f"{folder}: damaged classifier files ({e}); save it again with btembed probe") from None
        if meta.get("format") != FORMAT:
            raise BtembedError(f"{folder}/{META}: unknown format {meta.get('format')!r}; expected {FORMAT}")
        path = folder / WEIGHTS
        recorded = meta.get("files", {}).get(WEIGHTS)
        if not path.is_file() or (recorded and sha256_file(path) != recorded):
            raise BtembedError(f"{path} is missing or does not match the sha256 in {META}; save it again")
        try:
            t = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise BtembedError(f"{path} is not a readable safetensors file ({e})") from None
        head = LinearClassifier(t["weight"], t["bias"], t["mean"], t["std"], float(meta.get("weight_decay", 0.0)))
        if head.weight.shape != (len(classes), meta["features"]["dim"]):
            raise BtembedError(f"{folder}: weight shape {head.weight.shape} does not fit {len(classes)} classes "
                               f"of {meta['features']['dim']}-d features; save it again")
        info = {k: v for k, v in meta.items()
                if k not in ("format", "btembed_version", "features", "weight_decay", "num_classes", "files")}
        return cls(head, classes, meta["features"], info)

    def check_features(self, identity: dict) -> None:
        """Refuse features from another model than the one this classifier was trained on."""
        want = self.features
        same_kind = identity.get("kind") == want.get("kind")
        if want.get("sha256") and identity.get("sha256"):
            same = same_kind and identity["sha256"] == want["sha256"]
        else:
            same = same_kind and identity.get("model") == want.get("model")
        if not same or identity.get("dim") != want.get("dim"):
            def describe(d):
                digest = f", weights sha256 {d['sha256'][:12]}…" if d.get("sha256") else ""
                return f"{d.get('model')} ({d.get('dim')}-d{digest})"

            raise ModelError(f"this classifier was trained on {describe(want)} features, but the model given is "
                             f"{describe(identity)}; pass the same model with --model, or train a new classifier "
                             "for this model with btembed probe --save")

    def top(self, features: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """Per row, the k most probable (class name, probability), best first."""
        probs = self.head.probabilities(features)
        k = max(1, min(k, len(self.classes)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
