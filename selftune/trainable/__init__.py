"""The self-training loop: plain PyTorch, no Ray. `selftune.search` wraps it for Ray Tune."""

from selftune.trainable.config import TrainConfig, demo_config

__all__ = ["TrainConfig", "demo_config"]
