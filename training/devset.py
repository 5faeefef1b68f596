"""Moved to `python -m devdata.devset`; this old name says so."""
from training.moved import forward

if __name__ == "__main__":
    forward("training.devset", "devdata.devset")
