"""Moved to `python -m hub.ship_default`; this old name says so."""
from training.moved import forward

if __name__ == "__main__":
    forward("training.ship_default", "hub.ship_default")
