"""Model registry: an MLP, the seed article's CNN and a small GPT, each in size presets.

Every model lists its `shard_units`: the blocks that ZeRO-2/3 wrap one by one
(FSDP2 `fully_shard` on each, then on the root), so a layer is gathered only
while it computes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.registry import MODELS, DataShape


class MLP(nn.Module):
    def __init__(self, shape: DataShape, hidden: int, depth: int):
        super().__init__()
        widths = [shape.channels * shape.height * shape.width] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], shape.num_classes)
        self.shard_units = [*self.hidden, self.head]

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class CNN(nn.Module):
    """The seed article's network: conv-relu-pool x2 -> linear -> relu -> linear, sized to its input."""

    def __init__(self, shape: DataShape, c1: int, c2: int, fc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(shape.channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        # Two 2x2 pools quarter each side; the article's flatten size was wrong for 32x32 inputs.
        flat = c2 * (shape.height // 4) * (shape.width // 4)
        self.fc1 = nn.Linear(flat, fc)
        self.fc2 = nn.Linear(fc, shape.num_classes)
        self.shard_units = [self.conv1, self.conv2, self.fc1, self.fc2]

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)  # logits; cross_entropy applies the log-softmax


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small decoder-only transformer for character-level text (untied embeddings, no dropout)."""

    def __init__(self, shape: DataShape, layers: int, width: int, heads: int):
        super().__init__()
        self.token = nn.Embedding(shape.vocab_size, width)
        self.position = nn.Embedding(shape.context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, shape.vocab_size, bias=False)
        self.shard_units = list(self.blocks)
        for p in self.parameters():  # GPT-2 style init keeps tiny models trainable in few steps
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.token(idx) + self.position(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# Registry metadata (names, presets, what data each needs) lives in engine/registry.py, torch-free,
# so specs validate without importing torch; here each name gets its module class.
BUILDERS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "gpt": GPT}


def build_model(model: str, size: str, shape: DataShape) -> nn.Module:
    preset = dict(MODELS[model].presets[size])
    preset.pop("context", None)  # carried by the DataShape
    return BUILDERS[model](shape, **preset)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_count(model: str, size: str, shape: DataShape) -> int:
    """Exact parameter count without allocating: the model is built on the meta device."""
    with torch.device("meta"):
        return count_parameters(build_model(model, size, shape))


def meta_model(model: str, size: str, shape: DataShape) -> nn.Module:
    """The model's structure and shapes, with no memory behind its tensors (for estimates)."""
    with torch.device("meta"):
        return build_model(model, size, shape)

