"""Moved to `python -m devdata.pool`; this old name says so."""
from training.moved import forward

if __name__ == "__main__":
    forward("training.offline_photos", "devdata.pool")
