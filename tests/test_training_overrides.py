"""Command-line overrides: list keys and objective settings parse; bad ones are one line; old spellings load."""
import re

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


def test_objective_is_chosen_and_set_on_the_command_line():
    tiny = load_recipe("cpu-tiny")
    assert tiny.objective == {"name": "barlow_twins", "lambd": 0.0051, "eps": 1e-5}
    c = apply_overrides(tiny, ["objective.lambd=0.01"])
    assert c.objective["lambd"] == 0.01 and c.objective["name"] == "barlow_twins"
    # The order does not matter: the name first, then its settings.
    assert apply_overrides(tiny, ["objective.lambd=1e-3", "objective=barlow_twins"]).objective["lambd"] == 1e-3
    assert apply_overrides(tiny, ["objective={name: barlow_twins, lambd: 0.02}"]).objective["lambd"] == 0.02
    assert apply_overrides(c, ["objective.lambd=0.01"]) == c


@pytest.mark.parametrize("override,message", [
    ("objective=barlow_twin", "unknown objective 'barlow_twin' (did you mean barlow_twins?)"),
    ("objective.lamda=0.1", "unknown setting(s) objective.lamda (did you mean objective.lambd?)"),
    ("objective.lambd=big", "config key objective.lambd must be a float"),
    ("objective.lambd=-1", "objective.lambd must be 0 or more, not -1.0"),
    ("objective=[1, 2]", "objective must be a name or a mapping"),
])
def test_bad_objective_settings_are_one_clear_line(override, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(load_recipe("cpu-tiny"), [override])
    code = main(["fit", "--recipe", "cpu-tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"), override])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("training: error: ") and message in err and err.count("\n") == 1, err


def test_the_old_flat_lambd_still_loads_and_says_the_new_spelling(tmp_path, capsys):
    from training import config as config_module
    from training.config import TrainConfig

    config_module._said.clear()
    old = {k: v for k, v in load_recipe("cpu-tiny").to_dict().items() if k != "objective"}
    loaded = TrainConfig.from_dict({**old, "lambd": 0.003})  # a checkpoint's config from before objectives
    assert loaded.objective == {"name": "barlow_twins", "lambd": 0.003, "eps": 1e-5}
    recipe = tmp_path / "old.yaml"
    recipe.write_text("architecture: resnet18\nlambd: 0.004\n")
    assert load_recipe(str(recipe)).objective["lambd"] == 0.004
    assert apply_overrides(load_recipe("cpu-tiny"), ["lambd=0.005"]).objective["lambd"] == 0.005
    err = capsys.readouterr().err
    assert err.splitlines() == ["note: config key lambd is now spelled objective.lambd (objective: {name: "
                                "barlow_twins, lambd: ...})"]
