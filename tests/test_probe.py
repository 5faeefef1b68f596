"""btembed probe / predict on a synthetic colour-shape dataset, with scikit-learn as an independent oracle."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from btembed.cli import main

SHAPES = {"blue_triangle": ((40, 70, 220), "triangle"), "green_square": ((40, 200, 60), "square"),
          "red_circle": ((220, 40, 40), "circle"), "yellow_bar": ((230, 210, 40), "bar")}


def draw_shapes(folder, per_class: int, seed: int) -> None:
    """folder/<class>/NNN.png: a coloured shape of random size and place on a light, jittered background."""
    rng = np.random.default_rng(seed)
    for name, (colour, shape) in SHAPES.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (80, 80), tuple(int(v) for v in rng.integers(190, 230, 3)))
            draw = ImageDraw.Draw(image)
            fill = tuple(int(np.clip(v + rng.integers(-20, 20), 0, 255)) for v in colour)
            cx, cy = (int(v) for v in rng.integers(25, 55, 2))
            r = int(rng.integers(16, 24))
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            else:
                draw.rectangle([cx - r, cy - 4, cx + r, cy + 4], fill=fill)
            image.save(folder / name / f"{i:03d}.png")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """4 classes x 30 images."""
    folder = tmp_path_factory.mktemp("shapes")
    draw_shapes(folder, 30, seed=0)
    return folder


@pytest.fixture(scope="module")
def held_back(tmp_path_factory):
    """3 more images per class, drawn with another seed and never seen by the probe."""
    folder = tmp_path_factory.mktemp("held_back")
    draw_shapes(folder, 3, seed=1)
    return folder


def run_json(capsys, argv) -> dict:
    """Run the CLI in-process and parse its JSON stdout."""
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_json_agrees_with_sklearn(shapes_dir, tiny_model_dir, capsys):
    from sklearn.linear_model import LogisticRegression

    from btembed.embedder import Embedder
    from btembed.probe import fit_standardizer, stratified_folds
    from btembed.probe.data import scan_labeled_folder

    doc = run_json(capsys, ["probe", str(shapes_dir), "--model", str(tiny_model_dir), "--json", "--workers", "0"])
    for key in ("top1", "top5", "balanced_accuracy"):
        assert 0.0 <= doc["linear"][key] <= 1.0 and 0.0 <= doc["knn"][key] <= 1.0
    assert 0.0 <= doc["knn"]["majority5_top1"] <= 1.0
    assert doc["classes"] == sorted(SHAPES) and doc["n"] == 120 and doc["dataset"]["skipped"] == []
    assert doc["protocol"]["folds"] == 5 and len(doc["linear"]["weight_decay"]) == 5
    assert sum(map(sum, doc["linear"]["confusion"])) == 120
    assert doc["linear"]["top1"] > 0.5  # an easy dataset: far above the 25 % of chance

    # The oracle: scikit-learn on the same features, folds and (per fold) regularisation strength.
    data = scan_labeled_folder(shapes_dir)
    x = Embedder.from_pretrained(tiny_model_dir).embed(data.paths, num_workers=0)
    y = np.array([doc["classes"].index(label) for label in data.labels])
    folds = stratified_folds(y, 5, seed=0)
    correct = 0
    for f, wd in enumerate(doc["linear"]["weight_decay"]):
        train, test = folds != f, folds == f
        mean, std = fit_standardizer(x[train])
        sk = LogisticRegression(C=1.0 / (wd * train.sum()), max_iter=5000)
        sk.fit((x[train] - mean) / std, y[train])
        correct += int((sk.predict((x[test] - mean) / std) == y[test]).sum())
    assert abs(doc["linear"]["top1"] - correct / len(y)) <= 0.02

    # kNN against a direct numpy reading of the protocol: top-20 cosine neighbours, weights exp(sim / 0.07).
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    hits = 0
    for f in range(5):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        sims = xn[test] @ xn[train].T
        for row, t in zip(sims, test):
            nearest = np.argsort(-row)[:20]
            votes = np.bincount(y[train][nearest], weights=np.exp(row[nearest] / 0.07), minlength=4)
            hits += int(votes.argmax() == y[t])
    assert abs(doc["knn"]["top1"] - hits / len(y)) <= 1.0 / len(y)


def test_save_then_predict(shapes_dir, held_back, tiny_model_dir, tmp_path, capsys):
    from conftest import make_model_dir

    clf = tmp_path / "clf"
    doc = run_json(capsys, ["probe", str(shapes_dir), "--model", str(tiny_model_dir), "--save", str(clf),
                            "--json", "--workers", "0"])
    assert doc["saved"] == str(clf)
    assert {p.name for p in clf.iterdir()} == {"classifier.safetensors", "labels.json", "classifier.json"}
    meta = json.loads((clf / "classifier.json").read_text())
    assert meta["features"]["dim"] == 512 and meta["features"]["sha256"]
    assert json.loads((clf / "labels.json").read_text())["classes"] == sorted(SHAPES)

    # No --model: predict loads the model recorded in the classifier.
    images = sorted(held_back.glob("*/*.png"))
    out = run_json(capsys, ["predict", str(clf), *map(str, images), "--top", "2", "--json", "--workers", "0"])
    assert len(out["predictions"]) == 12 and out["failures"] == []
    for p in out["predictions"]:
        assert p["label"] == p["path"].split("/")[-2], p
        assert len(p["top"]) == 2 and p["top"][0]["probability"] >= p["top"][1]["probability"]

    # Another model (other weights, same architecture and width) is refused with one clear line.
    other = make_model_dir(tmp_path / "other", seed=1)
    assert main(["predict", str(clf), str(images[0]), "--model", str(other)]) == 1
    err = capsys.readouterr().err
    assert "trained on" in err and "btembed probe --save" in err and "Traceback" not in err


def test_bad_images_skipped_and_small_class_reported(shapes_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "red_circle" / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    good = (data / "green_square" / "000.png").read_bytes()
    (data / "green_square" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "rare").mkdir()
    for i in range(2):
        shutil.copy(data / "yellow_bar" / f"{i:03d}.png", data / "rare" / f"{i}.png")
    doc = run_json(capsys, ["probe", str(data), "--features", "raw32", "--json"])
    skipped = {s["path"]: s["error"] for s in doc["dataset"]["skipped"]}
    assert set(skipped) == {"red_circle/not_an_image.jpg", "green_square/truncated.png"}
    assert all(skipped.values())
    excluded = doc["dataset"]["excluded_classes"]
    assert [e["class"] for e in excluded] == ["rare"] and "2 usable images" in excluded[0]["reason"]
    assert "5 folds" in excluded[0]["reason"]
    assert doc["classes"] == sorted(SHAPES) and doc["n"] == 120 and "rare" not in doc["linear"]["per_class"]

    # The text report names both problems as well.
    assert main(["probe", str(data), "--features", "raw32"]) == 0
    out = capsys.readouterr().out
    assert "not_an_image.jpg" in out and "truncated.png" in out
    assert "classes left out" in out and "rare: 2 usable images" in out

    # Too many folds for every class: each reason is said once, then one line on why nothing can be scored.
    assert main(["probe", str(data), "--features", "raw32", "--folds", "100"]) == 1
    err = capsys.readouterr().err
    assert err.count("fewer than the 100 folds") == 5
    assert err.strip().splitlines()[-1].endswith("fewer than 2 classes have enough usable images (5 left out, as "
                                                 "listed above)")


def test_train_val_layout(shapes_dir, held_back, tmp_path, capsys):
    data = tmp_path / "split"
    shutil.copytree(shapes_dir, data / "train")
    shutil.copytree(held_back, data / "val")
    (data / "val" / "unseen").mkdir()
    shutil.copy(held_back / "red_circle" / "000.png", data / "val" / "unseen" / "0.png")
    doc = run_json(capsys, ["probe", str(data), "--features", "raw32", "--json"])
    assert doc["layout"] == "train/val" and doc["n"] == 12 and len(doc["linear"]["weight_decay"]) == 1
    assert [e["class"] for e in doc["dataset"]["excluded_classes"]] == ["unseen"]


def test_library_on_a_feature_matrix():
    from btembed.probe import ProbeConfig, evaluate, knn_scores, stratified_folds

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 16)) + 4.0 * np.eye(3, 16)[y]
    result = evaluate(x, y, ["a", "b", "c"], ProbeConfig(folds=4))
    assert result.linear.top1 >= 0.95 and result.knn.top1 >= 0.9 and result.majority.top1 >= 0.9
    assert result.linear.top5_k == 3 and result.linear.top5 == 1.0
    assert set(result.to_dict()) >= {"linear", "knn", "protocol", "classes"}
    folds = stratified_folds(y, 4)
    assert all(np.bincount(folds[y == c]).tolist() == [5, 5, 5, 5] for c in range(3))
    # Majority vote: 3 of 5 neighbours say class 1 even though the single nearest is class 0.
    train = np.array([[1.0, 0.0], [0.9, 0.3], [0.9, 0.35], [0.9, 0.4], [0.0, 1.0], [-1.0, 0.0]])
    scores = knn_scores(train, np.array([0, 1, 1, 1, 0, 2]), np.array([[1.0, 0.0]]), 3, k=5, weighted=False)
    assert scores.argmax() == 1


def test_reuses_the_index_catalog(shapes_dir, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "indexed"
    shutil.copytree(shapes_dir, data)
    assert main(["index", str(data), "--model", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    # One file changes after indexing: its stored vector is stale and must be recomputed.
    Image.new("RGB", (80, 80), (220, 40, 40)).save(data / "red_circle" / "000.png")
    args = ["probe", str(data), "--model", str(tiny_model_dir), "--json", "--workers", "0"]
    reused = run_json(capsys, args)
    fresh = run_json(capsys, args + ["--no-catalog"])
    assert reused["dataset"]["from_catalog"] == 119 and fresh["dataset"]["from_catalog"] == 0
    # The catalog stores float16 vectors, so the numbers may differ by a hair, not more.
    assert abs(reused["linear"]["top1"] - fresh["linear"]["top1"]) <= 0.02
    assert abs(reused["knn"]["top1"] - fresh["knn"]["top1"]) <= 0.02


def test_save_onto_a_file_is_refused_before_any_work(shapes_dir, tmp_path, monkeypatch, capsys):
    import btembed.probe.data as data

    def no_work(*args, **kwargs):
        raise AssertionError("the folder was scanned before --save was checked")

    monkeypatch.setattr(data, "scan_labeled_folder", no_work)
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(b"not a folder")
    for target in (photo, photo / "clf"):
        assert main(["probe", str(shapes_dir), "--save", str(target)]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "is a file; give --save a new folder" in err, err
    assert photo.read_bytes() == b"not a folder"


def test_save_says_it_once_and_writes_every_file_with_one_mode(shapes_dir, tiny_model_dir, tmp_path, capsys):
    clf = tmp_path / "clf"
    assert main(["probe", str(shapes_dir), "--model", str(tiny_model_dir), "--save", str(clf), "--workers", "0",
                 "--folds", "2"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("classifier saved to") == 1
    modes = {p.name: p.stat().st_mode & 0o777 for p in clf.iterdir()}
    assert modes["classifier.safetensors"] == modes["labels.json"] == modes["classifier.json"], modes
    assert modes["classifier.safetensors"] == 0o666 & ~os.umask(os.umask(0o022)), modes
