"""int8 that keeps the neighbours: the parity measure, parity records, precision="auto", the search, the export."""
from __future__ import annotations

import contextlib
import io
import json
import platform
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from btembed import Embedder
from btembed.backends import int8 as int8_module
from btembed.backends import load_backend, parity
from btembed.backends.int8 import Int8Choice, hold_apart, search, sweep_units, unit_of
from btembed.backends.onnx import OnnxBackend
from btembed.backends.parity import ParityRecord, Runtime, agreement, find_record, recall_at_k, write_record
from btembed.backends.precision import choose_precision
from btembed.cli import main
from btembed.config import ModelConfig
from btembed.modelfiles import INT8_FILE, sha256_file

from conftest import make_model_dir, skimage_photos


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Every test gets its own btembed cache (parity records land there for shared folders)."""
    monkeypatch.setenv("BTEMBED_CACHE", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def unit_rows(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_and_cosine_measure_neighbour_agreement():
    ref = unit_rows(60)
    same = agreement(ref, ref)
    assert same["recall_at_10"] == 1.0 and same["mean_cosine"] == pytest.approx(1.0) and same["images"] == 60
    noisy = ref + 0.3 * unit_rows(60, seed=1)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    worse = agreement(noisy, ref)
    assert 0 < worse["recall_at_10"] < 1 and worse["min_cosine"] < worse["mean_cosine"] < 1
    # a shuffled row order is a different set of neighbours altogether
    assert recall_at_k(ref[::-1].copy(), ref) < 0.5


def test_recall_within_galleries_compares_sets_of_one_size():
    ref = unit_rows(120)
    noisy = ref + 0.3 * unit_rows(120, seed=1)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    whole = agreement(noisy, ref)
    assert agreement(noisy, ref, gallery=120) == whole == agreement(noisy, ref, gallery=1000)
    # galleries of ~40: every third row, neighbours found among those rows only, averaged over all 120 images
    thirds = [recall_at_k(noisy[i::3], ref[i::3]) for i in range(3)]
    small = agreement(noisy, ref, gallery=40)
    assert small["recall_at_10"] == pytest.approx(np.mean(thirds)) and small["images"] == 120
    assert small["mean_cosine"] == whole["mean_cosine"]
    # fewer candidates crowd a neighbourhood less: recall is higher in the smaller sets
    assert small["recall_at_10"] > whole["recall_at_10"]


def test_vnni_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert not parity.cpu_has_vnni(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx_vnni\n")
    assert parity.cpu_has_vnni(cpuinfo)
    assert not parity.cpu_has_vnni(tmp_path / "missing")


def test_a_quarter_is_held_apart():
    calibrate, held = hold_apart(203)
    assert len(held) == 50 and len(calibrate) == 153 and not set(calibrate) & set(held)
    assert sorted([*calibrate, *held]) == list(range(203))


def fake_record(path: Path, recall: float = 0.995, cosine: float = 0.998, runtime: Runtime | None = None):
    runtime = runtime or Runtime.here()
    return ParityRecord(sha256_file(path), runtime.onnxruntime, runtime.machine, runtime.vnni, recall, cosine,
                        cosine - 0.01, images=100, calibration_images=300, calibration_method="MinMax")


def test_records_live_beside_the_file_or_in_the_cache(tmp_path, user_cache, monkeypatch):
    own = tmp_path / "own" / INT8_FILE
    own.parent.mkdir()
    own.write_bytes(b"int8 bytes")
    where = write_record(fake_record(own), own)
    assert where == own.parent / "model.int8.parity.json"
    assert find_record(own).recall_at_10 == 0.995
    other = Runtime("0.0.1", platform.machine(), True)
    write_record(fake_record(own, 0.9, runtime=other), own)  # another runtime's record is added, not replacing
    assert find_record(own).recall_at_10 == 0.995 and find_record(own, runtime=other).recall_at_10 == 0.9
    own.write_bytes(b"other int8 bytes")  # the record describes that very file, not a later one
    assert find_record(own) is None
    # a shared (or read-only) folder is never written into: the record goes to btembed's cache
    shared = tmp_path / "shared" / INT8_FILE
    shared.parent.mkdir()
    shared.write_bytes(b"shared int8")
    monkeypatch.setattr(parity, "shared_location", lambda folder: "a Hugging Face cache snapshot")
    where = write_record(fake_record(shared), shared)
    assert where.is_relative_to(user_cache) and not (shared.parent / "model.int8.parity.json").exists()
    assert find_record(shared).images == 100
    (shared.parent / "model.int8.parity.json").write_text("{not json")  # a damaged sidecar is no record
    assert find_record(shared) is not None


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory):
    """A tiny random-init model folder with a model.int8.onnx and no parity record.

    The choice reads only the file's bytes and its record, so a copy of the fp32 export stands in for a real int8
    file (quantizing is tested below, where it is the subject)."""
    import shutil

    root = tmp_path_factory.mktemp("int8")
    folder = make_model_dir(root / "m", seed=5, input_size=32, resize_size=36)
    shutil.copy(OnnxBackend(folder, ModelConfig.load(folder), device="cpu").path, folder / INT8_FILE)
    return folder


def test_auto_runs_fp32_without_a_parity_record_and_int8_with_a_passing_one(int8_folder):
    folder = int8_folder
    backend = Embedder.from_pretrained(folder, device="cpu").backend  # precision="auto" is the default
    assert backend.precision == "fp32" and backend.name == "onnx"
    assert "no parity record" in backend.precision_choice.reason
    write_record(fake_record(folder / INT8_FILE), folder / INT8_FILE)
    try:
        backend = Embedder.from_pretrained(folder, device="cpu").backend
        assert backend.precision == "int8" and backend.path == folder / INT8_FILE
        assert "recall@10 0.995" in backend.precision_choice.reason
        # forced choices stay forced; a GPU or the torch backend keeps fp32
        assert load_backend("auto", folder, device="cpu", precision="fp32").precision == "fp32"
        assert choose_precision(folder, backend="torch").precision == "fp32"
        assert choose_precision(folder, device="cuda").precision == "fp32"
        write_record(fake_record(folder / INT8_FILE, recall=0.97), folder / INT8_FILE)
        choice = choose_precision(folder, device="cpu")
        assert choice.precision == "fp32" and "below the bar" in choice.reason
        # a record measured under another onnxruntime says nothing about this one
        here = Runtime.here()
        (folder / "model.int8.parity.json").unlink()
        write_record(fake_record(folder / INT8_FILE, runtime=Runtime("0.0.1", here.machine, here.vnni)),
                     folder / INT8_FILE)
        assert choose_precision(folder, device="cpu").precision == "fp32"
    finally:
        (folder / "model.int8.parity.json").unlink(missing_ok=True)
    assert load_backend("auto", folder, device="cpu", precision="int8").precision == "int8"


def test_sweep_units_follow_the_resnet_modules(int8_folder):
    import onnx

    assert unit_of("x: trunk: torchvision.models.resnet.ResNet/pixel_encoder.encoder.trunk.bn1: BN", "block") == "stem"
    path = "pixel_encoder.encoder.trunk.layer2.1: BasicBlock/pixel_encoder.encoder.trunk.layer2.1.bn2: BN"
    assert [unit_of(path, level) for level in ("stage", "block", "layer")] == ["layer2", "layer2.1", "layer2.1.bn2"]
    assert unit_of("pixel_encoder: btembed.model.PixelEncoder/add_15", "block") is None  # input normalization
    fp32 = OnnxBackend(int8_folder, ModelConfig.load(int8_folder), device="cpu").path
    model = onnx.load(str(fp32))
    assert list(sweep_units(model, "stage")) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    blocks = sweep_units(model, "block")
    assert len(blocks) == 9 and sum(map(len, blocks.values())) == sum(map(len, sweep_units(model, "stage").values()))


def test_int8_rewrites_keep_the_fp32_function_and_take_the_weight_rounding_off_the_biases(int8_folder, tmp_path):
    import onnx
    from onnx import numpy_helper

    from btembed.backends.int8 import Quantizer, embed_with, equalization_groups

    config = ModelConfig.load(int8_folder)
    fp32 = OnnxBackend(int8_folder, config, device="cpu").path
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    quantizer = Quantizer(fp32, tmp_path / "work", pixels, config)
    # ResNet-18: one residual stream per stage (the stem's output joins layer1's) + the inside of each block
    assert quantizer.equalized == 12 and quantizer.bias_correction
    groups = equalization_groups(onnx.load(str(tmp_path / "work" / "prepared.onnx")))
    assert len(groups) == 12 and sum(len(g.pools) for g in groups) == 1  # layer4's scale is undone after the pool
    reference = embed_with(fp32, config, pixels)
    assert np.abs(embed_with(quantizer.prepared, config, pixels) - reference).max() < 1e-4  # the same function
    corrections = quantizer.corrections("MinMax")
    stem = quantizer.units("block")["stem"]
    corrected = onnx.load(str(quantizer.correct_biases("MinMax", stem, tmp_path / "corrected.onnx")))
    prepared = onnx.load(str(quantizer.prepared))
    before = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    convs = [n for n in corrected.graph.node if n.op_type == "Conv"]
    assert len(corrections) == len(convs) == 20
    for conv in convs:  # the biases of quantized convolutions move by the correction, those kept in fp32 do not
        bias = conv.input[2] if len(conv.input) > 2 else ""  # random BN statistics fold into no bias at all
        shift = before.get(bias, 0) - after.get(bias, 0)
        expected = 0 if conv.name in stem else corrections[conv.name]
        np.testing.assert_allclose(shift, expected, atol=1e-5)
    figures = agreement(embed_with(quantizer.quantize("MinMax", stem, tmp_path / "int8.onnx"), config, pixels),
                        reference)
    assert figures["mean_cosine"] > 0.9
    assert "channel equalization (power 0.5, 12 groups)" in int8_module.rewrites(quantizer)


class FakeQuantizer:
    """Stands in for Quantizer: 'quantizing' adds noise that keeping unit b in fp32 removes most of."""

    units_noise = {"a": 0.01, "b": 0.2, "c": 0.02}

    def __init__(self, tmp_path, reference):
        self.workdir, self.pixels, self.config, self.reduce_range = tmp_path, reference, None, False
        self.kept: list = []

    def units(self, level):
        return {u: [f"node_{u}"] for u in self.units_noise}

    def quantize(self, method, kept_nodes, out):
        self.kept = kept_nodes
        return out


def test_search_picks_a_method_then_keeps_the_most_damaging_unit(tmp_path, monkeypatch):
    reference = unit_rows(120, dim=16)
    fake = FakeQuantizer(tmp_path, reference)
    noise = unit_rows(120, dim=16, seed=9)

    def fake_embed(path, config, pixels):
        level = sum(v for u, v in fake.units_noise.items() if f"node_{u}" not in fake.kept)
        x = reference + level * noise
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    monkeypatch.setattr(int8_module, "embed_with", fake_embed)
    choice = search(fake, reference, methods=("MinMax", "Percentile"), level="block", max_kept=1)
    assert isinstance(choice, Int8Choice) and choice.kept_units == ["b"] and choice.kept_nodes == ["node_b"]
    assert max(choice.sensitivity, key=choice.sensitivity.get) == "b"
    assert {t.method for t in choice.trials} == {"MinMax", "Percentile"}
    with pytest.raises(int8_module.ExportError, match="unknown calibration method"):
        search(fake, reference, methods=("Best",))


def test_search_holds_the_worst_kind_of_image_not_only_the_mix(tmp_path, monkeypatch):
    reference = unit_rows(240, dim=16)
    kinds = np.array(["clipart", "photos"] * 120)
    fake = FakeQuantizer(tmp_path, reference)
    noise = unit_rows(240, dim=16, seed=9) * (kinds == "clipart")[:, None]  # int8 hurts only the clip art

    def fake_embed(path, config, pixels):
        level = sum(v for u, v in fake.units_noise.items() if f"node_{u}" not in fake.kept)
        x = reference + level * noise
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    monkeypatch.setattr(int8_module, "embed_with", fake_embed)
    said: list = []
    choice = search(fake, reference, methods=("MinMax",), level="block", max_kept=0, kinds=kinds, gallery=120,
                    say=said.append)
    whole = choice.trials[0]
    clipart = agreement(fake_embed(None, None, None)[kinds == "clipart"], reference[kinds == "clipart"], gallery=120)
    mixed = agreement(fake_embed(None, None, None), reference, gallery=120)
    assert whole.worst == "clipart" and whole.recall_at_10 == pytest.approx(clipart["recall_at_10"])
    assert whole.recall_at_10 < mixed["recall_at_10"]
    assert "worst of the mixed set and 2 kinds (clipart, photos)" in said[0] and "(clipart)" in said[1]
    assert choice.to_dict()["trials"][0]["worst_kind"] == "clipart"
    # a kind with fewer than MIN_KIND_IMAGES images is not judged on its own
    few = np.array(["clipart"] * 20 + ["photos"] * 220)
    judged = search(fake, reference, methods=("MinMax",), level="block", max_kept=0, kinds=few)
    assert judged.trials[0].worst in ("", "photos")


def test_the_calibration_sample_knows_each_images_subfolder(int8_folder, tmp_path):
    from btembed.backends.int8 import folder_sample

    image_folder(tmp_path / "cal" / "textures", 3)
    image_folder(tmp_path / "cal" / "clipart" / "deeper", 2)
    (tmp_path / "cal" / "top.png").write_bytes((tmp_path / "cal" / "textures" / "000.png").read_bytes())
    pixels, kinds = folder_sample(tmp_path / "cal", ModelConfig.load(int8_folder), 100)
    assert len(pixels) == len(kinds) == 6
    assert sorted(kinds.tolist()) == ["", "clipart", "clipart", "textures", "textures", "textures"]


def image_folder(folder: Path, n: int) -> Path:
    """n small distinct PNGs: crops of scikit-image's photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(skimage_photos().values())
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.2, 0.6))
        top, left = rng.integers(0, h - side), rng.integers(0, w - side)
        crop = Image.fromarray(photo[top:top + side, left:left + side]).convert("RGB").resize((72, 72))
        crop.save(folder / f"{i:03d}.png")
    return folder


def test_export_int8_measures_parity_on_held_apart_images_and_records_it(tmp_path, capsys):
    folder = make_model_dir(tmp_path / "m", seed=2)
    images = image_folder(tmp_path / "images", 200)
    out = tmp_path / "out" / INT8_FILE
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(folder), "--onnx", str(out), "--int8", "--calibration", str(images),
                     "--calibration-method", "MinMax", "--sweep", "stage", "--json"]) == 0
    report = json.loads(stdout.getvalue())
    assert report["calibration_images"] == 150 and report["held_apart_images"] == 50
    figures = report["parity_vs_fp32"]
    assert figures["images"] == 50 and 0 < figures["recall_at_10"] <= 1 and figures["mean_cosine"] > 0.9
    record = find_record(out)
    assert record is not None and record.int8_sha256 == report["sha256"] == sha256_file(out)
    assert record.recall_at_10 == pytest.approx(figures["recall_at_10"], abs=1e-4)
    assert record.passes() == report["passes_bar"]
    assert Path(report["parity_record"]) == out.parent / "model.int8.parity.json"
    # fewer than 200 readable images: refused in one line before any quantization
    few = image_folder(tmp_path / "few", 20)
    assert main(["export", str(folder), "--onnx", str(tmp_path / "x.onnx"), "--int8", "--calibration",
                 str(few)]) == 1
    assert "has 20 readable images; int8 needs at least 200" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_the_catalog_records_its_precision_and_never_mixes_two(int8_folder, tmp_path):
    from btembed.errors import CatalogError
    from btembed.search import IndexOptions, index_folder
    from btembed.search.catalog import CATALOG_FILE, Catalog
    from btembed.search.store import live_folder

    photos = image_folder(tmp_path / "photos", 4)
    said: list = []
    report = index_folder(photos, IndexOptions(model=str(int8_folder), device="cpu"), say=said.append)
    assert report.precision == "fp32" and any("no parity record" in line for line in said)
    (photos / "new.png").write_bytes((photos / "000.png").read_bytes()[:-1] + b"\0")
    with pytest.raises(CatalogError, match=r"are fp32, this run would add int8 ones; pass --rebuild"):
        index_folder(photos, IndexOptions(model=str(int8_folder), device="cpu", precision="int8"))
    report = index_folder(photos, IndexOptions(model=str(int8_folder), device="cpu", precision="int8", rebuild=True))
    assert report.precision == "int8" and report.embedded == 5
    # precision="auto" on an existing catalog keeps what it holds, though auto alone would choose fp32 here
    (photos / "later.png").write_bytes((photos / "001.png").read_bytes())
    report = index_folder(photos, IndexOptions(model=str(int8_folder), device="cpu"))
    assert report.precision == "int8"
    catalog = Catalog.open(live_folder(Path(report.store)) / CATALOG_FILE, read_only=True)
    try:
        assert catalog.model_stamp().precision == "int8" and catalog.meta()["precision"] == "int8"
    finally:
        catalog.close()
    # `btembed probe` reuses an index's vectors only at the precision it embeds at: never a mix of two
    from btembed.search import stored_vectors

    config = ModelConfig.load(int8_folder)
    paths = sorted(str(f) for f in photos.iterdir() if f.is_file())
    stamp = {"weights_sha256": config.files["model.safetensors"], "dim": config.embedding_dim,
             "model_id": config.name}
    found, note = stored_vectors(photos, paths, **stamp, precision="fp32")
    assert found == {} and "holds int8 vectors and this run embeds at fp32" in note
    found, _ = stored_vectors(photos, paths, **stamp, precision="int8")
    assert len(found) == len(paths) == 6


def test_the_embedded_default_ships_its_int8_file_and_record():
    from btembed.modelfolder import ModelFolder

    folder = ModelFolder.resolve(None)
    int8 = folder.path / INT8_FILE
    assert folder.config.files[INT8_FILE] == sha256_file(int8)  # vouched for by config.json
    data = json.loads(parity.sidecar_path(int8).read_text())
    shipped = [ParityRecord.from_dict(r) for r in data["records"]]
    assert shipped and all(r.int8_sha256 == sha256_file(int8) and r.passes() for r in shipped)
    choice = choose_precision(folder.path, device="cpu")
    if any(r.runtime == Runtime.here() for r in shipped):  # the runtime it was measured under: int8 by default
        assert choice.precision == "int8" and "recall@10" in choice.reason
    else:
        assert choice.precision == "fp32" and "no parity record" in choice.reason
