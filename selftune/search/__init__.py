"""Hyperparameter search: Ray Tune + Optuna + ASHA around the self-training loop."""
