"""`python -m hub calibrate-dedup MODEL --photos DIR [--record]`: the duplicate threshold of a converted or published
model, calibrated on photos at hand, written into its folder's config.json and card and, with --record, into its
registry entry (which converted folders take it from: btembed/sources.py)."""
from __future__ import annotations

from pathlib import Path

from btembed.modelfolder import ModelFolder
from btembed.search.model_threshold import (SAMPLE_SIZE, CalibrationError, calibrate_model, record_threshold,
                                            summary, too_poor)

from .registry_tools import REGISTRY_PATH, read_registry, record_duplicate_threshold


def registry_name(model: ModelFolder, asked: str, name: str | None, registry: dict) -> str:
    """The registry entry --record writes: --name, else the name the model was asked by, else its config's name."""
    models = registry.get("models", {})
    for candidate in (name,) if name else (asked, model.config.name):
        if candidate in models:
            return candidate
    which = repr(name) if name else f"{asked!r} (nor the model's name {model.config.name!r})"
    raise CalibrationError(f"--record: {which} is no entry of the registry; add one first (python -m hub registry "
                           "add) or name an existing entry with --name")


def calibrate_dedup(model_name: str, photos: str | Path, *, record: bool = False, name: str | None = None,
                    registry: str | Path | None = None, count: int = SAMPLE_SIZE, seed: int = 0, say=print,
                    force: bool = False) -> dict:
    """Calibrate a model's threshold on a sample of photos; write it where allowed; the result as a dict.

    A threshold below the quality floor (model_threshold.too_poor) is refused in one line unless force.
    """
    model = ModelFolder.resolve(model_name)
    shared = model.shared
    if shared and not record:
        raise CalibrationError(f"{model.path} is {shared}, which btembed never writes into; copy the folder and "
                               "calibrate the copy, or pass --record to write the registry entry only")
    path = registry or REGISTRY_PATH
    entry = registry_name(model, model_name, name, read_registry(path)) if record else None  # before the work
    calibration, dataset, seconds = calibrate_model(model, photos, f"the folder {Path(photos).name}",
                                                    count=count, seed=seed)
    say(f"{model.display_name}: {summary(calibration, dataset)}, {seconds:.1f} s")
    poor = too_poor(calibration)
    if poor and not force:
        raise CalibrationError(f"duplicate threshold not recorded: {poor}, so `btembed dedup` will use 0.95 for "
                               "this model; calibrate on other photos, or pass --force to record it anyway")
    if shared:
        say(f"config.json of {model.path} left as it is ({shared})")
    else:
        redrawn = record_threshold(model, calibration, dataset)
        say(f"wrote it into {model.file('config.json')}" + (" and the card" if redrawn
                                                            else " (the card is hand-written: left as it is)"))
    if entry is not None:
        record_duplicate_threshold(entry, calibration.threshold, calibration.metrics(dataset), path=path,
                                   embedding_only=calibration.embedding_only[0] if calibration.embedding_only else None)
        say(f"recorded it in the registry entry {entry} ({path})")
    return {"model": model.display_name, "threshold": calibration.threshold,
            "precision": round(calibration.precision, 4), "recall": round(calibration.recall, 4),
            "photos": calibration.photos, "dataset": dataset, "registry_entry": entry}
