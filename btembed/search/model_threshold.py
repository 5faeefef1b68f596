"""A model folder's duplicate threshold: calibrated on a seeded sample of a photo folder, recorded in its config.

Whoever makes a model folder calls this: `python -m training export` on the run's own training images,
`python -m hub calibrate-dedup` for converted or published models. The threshold and the pair precision/recall
measured at it go into config.json (`duplicate_threshold`, metrics) and the card.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from PIL import Image

from ..errors import BtembedError, ImageError
from ..images import find_images, open_image
from ..modelfiles import CARD_FILE
from ..modelfolder import ModelFolder
from .calibrate import Calibration, calibrate_threshold

SAMPLE_SIZE = 40  # photos per calibration: 320 images to embed (each + 7 edits), seconds for a ResNet-18 on a CPU
MIN_PHOTOS = 10  # fewer distinct photos give too few pairs of different photos to place a threshold by
TRIES_PER_PHOTO = 3  # unreadable files are skipped, but only so many are tried: a folder of junk ends soon
# A calibrated threshold replaces the 0.95 fallback only when it is good enough to: below 0.9 pair precision about
# one proposed removal in ten is a distinct photo (the fallback measured 0.87-0.89 on the default model, so such a
# number gains nothing), and below 0.5 recall the threshold misses most copies (it sits so high that mostly
# byte-identical files group). A short or failed run lands under these (6 steps: precision 0.44, recall 0.26).
MIN_PRECISION = 0.9
MIN_RECALL = 0.5


class CalibrationError(BtembedError):
    """Photos a duplicate threshold cannot be calibrated on (no such folder, too few readable images)."""


def sample_photos(folder: str | Path, count: int = SAMPLE_SIZE, seed: int = 0, short_side: int = 0) -> list:
    """Up to `count` readable photos of a folder (recursive), a seeded random sample, as RGB PIL images.

    short_side > 0 shrinks larger photos to that short side: twice the model's resize keeps the half-size edit
    above it, so the model sees the same detail while a 24 MP photo costs no more than a small one.
    """
    files = list(find_images(folder))
    photos = []
    for path in random.Random(seed).sample(files, min(len(files), count * TRIES_PER_PHOTO)):
        try:
            photo = open_image(path, min_size=short_side or None)
        except ImageError:
            continue
        if short_side and min(photo.size) > short_side:
            scale = short_side / min(photo.size)
            photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                                 Image.BICUBIC, reducing_gap=2.0)
        photos.append(photo)
        if len(photos) == count:
            break
    return photos


def calibrate_model(model: ModelFolder, photos: str | Path, what: str, *, count: int = SAMPLE_SIZE, seed: int = 0,
                    device: str = "auto") -> tuple[Calibration, str, float]:
    """(calibration, the dataset it names, seconds taken) of a model on a sample of a photo folder.

    what names the folder in the recorded metrics (e.g. "the run's training images"): no machine paths.
    """
    from ..embedder import Embedder

    folder = Path(photos)
    if count < MIN_PHOTOS:
        raise CalibrationError(f"a sample of {count} photos is too small; calibrating a duplicate threshold needs "
                               f"at least {MIN_PHOTOS}")
    if not folder.is_dir():
        raise CalibrationError(f"{folder} is not a folder (it is gone or was never there); give a folder of "
                               f"at least {MIN_PHOTOS} distinct photos")
    started = time.perf_counter()
    sample = sample_photos(folder, count, seed, short_side=2 * model.config.preprocess.resize_size)
    if len(sample) < MIN_PHOTOS:
        raise CalibrationError(f"{folder} has {len(sample)} readable images; calibrating a duplicate threshold "
                               f"needs at least {MIN_PHOTOS} distinct photos")
    embedder = Embedder.from_pretrained(model, device=device, backend="torch")  # no ONNX export for one use
    calibration = calibrate_threshold(embedder, sample)
    dataset = f"{len(sample)} photos (seeded sample, seed {seed}) of {what}"
    return calibration, dataset, time.perf_counter() - started


def too_poor(calibration: Calibration) -> str | None:
    """Why the calibrated threshold is not worth recording (below the quality floor), or None when it is."""
    if calibration.precision < MIN_PRECISION or calibration.recall < MIN_RECALL:
        return (f"its pair precision {calibration.precision:.3f} / recall {calibration.recall:.3f} are below the "
                f"floor of {MIN_PRECISION} / {MIN_RECALL}")
    return None


def record_threshold(model: ModelFolder, calibration: Calibration, dataset: str) -> bool:
    """Write the threshold and its precision/recall into the folder's config.json and card.

    The card is redrawn only when it is the one btembed draws from config.json (a hand-written card is left as
    it is); returns whether it was.
    """
    from ..card import render_card

    config, card = model.config, model.file(CARD_FILE)
    own_card = not card.exists() or card.read_text() == render_card(config)
    config.duplicate_threshold = calibration.threshold
    if calibration.embedding_only is not None:
        config.duplicate_threshold_embedding_only = calibration.embedding_only[0]
    config.metrics.update(calibration.metrics(dataset))
    config.save(model.path)
    if own_card:
        card.write_text(render_card(config))
    return own_card


def summary(calibration: Calibration, dataset: str) -> str:
    """One line: the threshold, its pair precision/recall, on what."""
    return (f"duplicate threshold {calibration.threshold} (pair precision {calibration.precision:.3f}, recall "
            f"{calibration.recall:.3f} on {dataset}, each + 7 edits)")
