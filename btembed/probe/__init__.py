"""Frozen-feature evaluation: the linear probe and kNN protocol, labeled-folder data, and saved classifiers."""
from .protocol import (LinearClassifier, Metrics, ProbeConfig, ProbeResult, compute_metrics, evaluate,
                       fit_logistic, fit_standardizer, format_confusion, knn_scores, select_weight_decay,
                       stratified_folds, stratified_holdout)

__all__ = ["LinearClassifier", "Metrics", "ProbeConfig", "ProbeResult", "compute_metrics", "evaluate",
           "fit_logistic", "fit_standardizer", "format_confusion", "knn_scores", "select_weight_decay",
           "stratified_folds", "stratified_holdout"]
