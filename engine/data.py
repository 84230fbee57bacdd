"""Data registry (all offline) and the global-batch order every rank agrees on.

Each step draws one global batch of B samples from a seeded permutation that
does not depend on the number of ranks; rank r takes the r-th contiguous
slice of B/N. That is DistributedSampler's job done so that DDP, every ZeRO
stage and one process on the full batch see exactly the same samples.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.registry import DATASETS, DataShape  # noqa: F401  (DATASETS re-exported)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TEXT_CORPUS = ASSETS / "text" / "python_docs.txt"
DEFAULT_CIFAR_DIR = Path("data") / "cifar-10-batches-py"
HELD_OUT_FRACTION = 0.2


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    shape: DataShape
    windows: bool = False  # text: x holds the token stream; items are windows into it

    def __len__(self) -> int:
        return self._items(self.train_x)

    def _items(self, stream: torch.Tensor) -> int:
        return len(stream) - self.shape.context if self.windows else len(stream)

    def batch(self, indices: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        if not self.windows:
            return x[indices], y[indices]
        offsets = indices[:, None] + torch.arange(self.shape.context)[None, :]
        return x[offsets], x[offsets + 1]

    def held_out_indices(self, limit: int) -> torch.Tensor:
        n = self._items(self.test_x)
        return torch.linspace(0, n - 1, min(limit, n)).long() if self.windows else torch.arange(min(limit, n))


def _split(x: np.ndarray, y: np.ndarray, seed: int, shape: DataShape) -> Dataset:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * HELD_OUT_FRACTION)
    test, train = order[:n_test], order[n_test:]
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    as_y = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return Dataset(as_x(x[train]), as_y(y[train]), as_x(x[test]), as_y(y[test]), shape)


def load_digits(context: int, data_dir: str) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, ships with the package).

    Read straight from the package's digits.csv.gz (what sklearn.datasets.load_digits parses):
    importing sklearn itself costs ~3 s, which every rank would pay before its first step.
    """
    package = Path(importlib.util.find_spec("sklearn").origin).parent
    table = np.loadtxt(package / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images = table[:, :-1].reshape(-1, 1, 8, 8) / 16.0  # pixel values 0..16 -> 0..1
    return _split(images, table[:, -1].astype(np.int64), seed=1234, shape=DataShape("image", 1, 8, 8, 10))


def load_synthetic(context: int, data_dir: str) -> Dataset:
    """4,096 seeded Gaussian 'images' labelled by a fixed random linear teacher (learnable, not noise)."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((4096, 1, 8, 8)).astype(np.float32)
    teacher = rng.standard_normal((64, 10)).astype(np.float32)
    y = (x.reshape(len(x), -1) @ teacher).argmax(1)
    return _split(x, y, seed=1234, shape=DataShape("image", 1, 8, 8, 10))


def load_text(context: int, data_dir: str) -> Dataset:
    """Character-level text: Python standard-library docstrings shipped in assets/ (see assets/README.md)."""
    text = TEXT_CORPUS.read_text(encoding="ascii")
    vocab = sorted(set(text))
    lookup = np.zeros(128, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    stream = torch.from_numpy(lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)])
    cut = int(len(stream) * (1 - HELD_OUT_FRACTION))  # a contiguous tail is held out: no window overlaps it
    shape = DataShape("text", vocab_size=len(vocab), context=context, num_classes=len(vocab))
    empty = torch.empty(0, dtype=torch.int64)
    return Dataset(stream[:cut], empty, stream[cut:], empty, shape, windows=True)


def load_cifar10(context: int, data_dir: str) -> Dataset:
    """CIFAR-10 from a local folder in its official python format (data_batch_1..5, test_batch)."""
    folder = Path(data_dir) if data_dir else DEFAULT_CIFAR_DIR
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: expected the official python-format files {', '.join(missing)} in "
            f"'{folder.resolve()}' (unpack cifar-10-python.tar.gz there, or set data_dir)"
        )

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official format is a pickle; only open files you trust
        return batch[b"data"].reshape(-1, 3, 32, 32) / 255.0, np.asarray(batch[b"labels"])

    parts = [read(n) for n in names[:5]]
    test_x, test_y = read("test_batch")
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return Dataset(f32(train_x), i64(train_y), f32(test_x), i64(test_y), DataShape("image", 3, 32, 32, 10))


LOADERS: dict[str, Callable[[int, str], Dataset]] = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "text": load_text,
    "cifar10": load_cifar10,
}


def load_dataset(name: str, context: int = 0, data_dir: str = "") -> Dataset:
    return LOADERS[name](context, data_dir)


def data_shape(name: str, context: int = 0) -> DataShape:
    """The shape models are sized by, without loading any data."""
    if name == "text":
        vocab_size = len(set(TEXT_CORPUS.read_text(encoding="ascii")))
        return DataShape("text", vocab_size=vocab_size, context=context, num_classes=vocab_size)
    return {
        "digits": DataShape("image", 1, 8, 8, 10),
        "synthetic": DataShape("image", 1, 8, 8, 10),
        "cifar10": DataShape("image", 3, 32, 32, 10),
    }[name]


def global_batch_indices(step: int, n_items: int, global_batch: int, seed: int) -> torch.Tensor:
    """Sample indices of global batch `step` (0-based): epochs of a seeded permutation, last partial batch dropped."""
    per_epoch = n_items // global_batch
    if per_epoch == 0:
        raise ValueError(f"global batch {global_batch} is larger than the {n_items} training samples")
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * global_batch : (position + 1) * global_batch]


def rank_slice(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]
