"""An exported model's duplicate threshold, calibrated on a seeded sample of the run's own training images.

`training export` calls `calibrate_export` once the model folder is written; the value lands in config.json
(`duplicate_threshold`, with its pair precision/recall among the metrics) and in the card, so `btembed dedup`
uses it. Other photos can be given instead; when there are none to use, or the best threshold is below the quality
floor (btembed.search.model_threshold.too_poor), it says why in one line and records nothing.
"""
from __future__ import annotations

from pathlib import Path

from btembed.modelfolder import ModelFolder


def calibrate_export(folder: str | Path, data: dict, seed: int, photos: str | Path | None, say) -> float | None:
    """Calibrate and record the threshold of the exported folder; the value, or None when skipped (said why).

    data is the checkpoint's record of the training images ({"path", "images"}); photos, when given, replaces them.
    """
    from btembed.search.model_threshold import (CalibrationError, calibrate_model, record_threshold, summary,
                                                too_poor)

    if photos is not None:
        source, what = Path(photos), f"the folder {Path(photos).name}"
    else:
        source, what = Path(data["path"]), f"the run's {data.get('images', 'training')} training images"
    model = ModelFolder.at(folder)
    try:
        calibration, dataset, seconds = calibrate_model(model, source, what, seed=seed)
    except CalibrationError as e:
        hint = "" if photos is not None else " (--dedup-photos DIR calibrates on other photos)"
        say(f"duplicate threshold not calibrated: {e}{hint}; `btembed dedup` will use 0.95 for this model")
        return None
    poor = too_poor(calibration)
    if poor:
        say(f"duplicate threshold not recorded: {calibration.threshold} was the best, but {poor} (a short or "
            f"failed run?); `btembed dedup` will use 0.95 for this model")
        return None
    redrawn = record_threshold(model, calibration, dataset)
    say(f"{summary(calibration, dataset)}, {seconds:.1f} s; recorded in config.json"
        + (" and the card" if redrawn else ""))
    return calibration.threshold
