"""Retraining btembed encoders with Barlow Twins: `python -m training fit | export | linear-eval` (see docs/training.md)."""
