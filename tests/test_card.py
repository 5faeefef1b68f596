"""Model cards: the Hub header names the method that trained the model."""
from btembed.card import card_metadata
from btembed.config import ModelConfig


def test_the_method_tag_follows_the_objective():
    config = ModelConfig.load("btembed/weights/default-r18")
    assert "barlow-twins" in card_metadata(config)["tags"]  # a run that names no objective: Barlow Twins
    config.training["objective"] = {"name": "directpred", "settings": {}}
    tags = card_metadata(config)["tags"]
    assert "directpred" in tags and "barlow-twins" not in tags
