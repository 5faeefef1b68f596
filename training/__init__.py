"""Retraining btembed encoders with Barlow Twins: `python -m training fit | export | linear-eval` (docs/training.md)."""
