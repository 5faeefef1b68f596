"""Moved to `python -m devdata.evaluate`; this old name says so."""
from training.moved import forward

if __name__ == "__main__":
    forward("training.dev_eval", "devdata.evaluate")
