"""What models and datasets exist, and their size presets: plain data, no torch.

Kept apart from engine/models.py and engine/data.py so that a job spec (and the
CLI, and the app's form) validates in milliseconds instead of importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataShape:
    """What a model must know about its data to size itself."""

    kind: str  # "image" or "text"
    channels: int = 1
    height: int = 8
    width: int = 8
    num_classes: int = 10
    vocab_size: int = 0
    context: int = 0


@dataclass(frozen=True)
class ModelInfo:
    input_kind: str  # the DataShape.kind it needs
    presets: dict[str, dict]
    describe: str


@dataclass(frozen=True)
class DatasetInfo:
    kind: str  # "image" or "text": which models it feeds
    describe: str
    train_items: int  # samples (text: windows, at the longest context) a global batch can draw from


MODELS: dict[str, ModelInfo] = {
    "mlp": ModelInfo(
        "image",
        {
            "tiny": dict(hidden=64, depth=2),
            "small": dict(hidden=512, depth=3),
            "medium": dict(hidden=2048, depth=4),
            "large": dict(hidden=4096, depth=6),
        },
        "Fully connected layers with ReLU on flattened images.",
    ),
    "cnn": ModelInfo(
        "image",
        {
            "tiny": dict(c1=8, c2=16, fc=32),
            "small": dict(c1=32, c2=64, fc=128),
            "seed": dict(c1=64, c2=128, fc=256),  # the seed article's widths
            "large": dict(c1=128, c2=256, fc=4096),
        },
        "The seed article's CIFAR-style CNN: conv-relu-pool x2, linear, linear.",
    ),
    "gpt": ModelInfo(
        "text",
        {
            "tiny": dict(layers=2, width=64, heads=4, context=64),
            "small": dict(layers=4, width=128, heads=4, context=128),
            "medium": dict(layers=6, width=384, heads=6, context=256),
            "large": dict(layers=12, width=768, heads=12, context=256),
        },
        "A decoder-only transformer trained on characters.",
    ),
}

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("image", "scikit-learn's 8x8 handwritten digits (1,797 real images, offline)", 1438),
    "synthetic": DatasetInfo("image", "seeded Gaussian 8x8 images with a learnable label rule", 3277),
    "text": DatasetInfo("text", "characters of Python's standard-library docs (offline)", 239744),
    "cifar10": DatasetInfo("image", "CIFAR-10 from a local folder (official python format)", 50000),
}


def model_context(model: str, size: str) -> int:
    """Sequence length a text model trains on (0 for image models)."""
    return MODELS[model].presets[size].get("context", 0)
