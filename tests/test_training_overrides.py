"""Command-line overrides of list-valued config keys: YAML flow lists and comma lists parse; bad ones are one line."""
import pytest

from training.__main__ import main
from training.config import ConfigError, apply_overrides, load_recipe


@pytest.mark.parametrize("override,key,want", [
    ("projector=2048,2048", "projector", [2048, 2048]),
    ("projector=[2048, 1024]", "projector", [2048, 1024]),
    ("projector=[2048,1024]", "projector", [2048, 1024]),
    ("projector=512", "projector", [512]),  # one layer
    ("crop_scale=[0.2,1.0]", "crop_scale", (0.2, 1.0)),
    ("crop_scale=0.2,1", "crop_scale", (0.2, 1.0)),
    ("crop_scale= 0.2 , 1.0 ", "crop_scale", (0.2, 1.0)),
    ("crop_scale=(0.2, 1.0)", "crop_scale", (0.2, 1.0)),
    ("mean=0.5,0.5,0.5", "mean", (0.5, 0.5, 0.5)),
])
def test_list_overrides_parse(override, key, want):
    config = apply_overrides(load_recipe("cpu-tiny"), [override])
    assert getattr(config, key) == want
    assert all(type(v) is type(want[0]) for v in getattr(config, key))


@pytest.mark.parametrize("override,message", [
    ("projector=[a, b]", "config key projector must be a list of integers"),
    ("projector=2048,abc", "config key projector must be a list of integers"),
    ("projector=[64, 64.5]", "config key projector must be a list of integers"),
    ("projector=[[64, 64]]", "config key projector must be a list of integers"),
    ("projector=2048,", "config key projector must be a list of integers"),
    ("crop_scale=[0.2, 1.0", "config key crop_scale must be a list of numbers"),
    ("crop_scale={a: 1}", "config key crop_scale must be a list of numbers"),
    ("crop_scale=0.2,1.0,3", "config key crop_scale needs 2 values"),
    ("mean=[0.5]", "config key mean needs 3 values"),
    ("epochs=true", "config key epochs must be an int"),
    ("export_interpolation=cubic", "export_interpolation must be one of nearest, bilinear, bicubic"),
])
def test_bad_list_overrides_are_one_clear_line(override, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_recipe("cpu-tiny"), [override])
    # From the command line: exit 1 with one line naming the key, no traceback, before any data is read.
    code = main(["fit", "--recipe", "cpu-tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"), override])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("training: error: " + message) and err.count("\n") == 1, err
