"""Activation bytes one rank keeps for backward: Korthikanti et al. 2022, by precision and attention kernel.

ZeRO does not shard activations: every rank keeps those of its own micro-batch at every stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.architectures import TransformerConfig
from engine.estimate.inputs import ACTIVATION_BYTES, ATTENTION, MAX_BATCH, MAX_SEQ, RECOMPUTE, choice, whole


@dataclass(frozen=True)
class Activations:
    """Activation bytes one rank keeps for backward (per micro-batch)."""

    per_layer_bytes: int
    layers: int
    output_bytes: int  # final norm, output projection input, fp32 logits for the loss, embedding dropout
    recompute: str
    attention: str = "flash"
    weight_copies_bytes: int = 0  # bf16 autocast keeps a 16-bit copy of each matmul weight for backward

    @property
    def layers_bytes(self) -> int:
        return self.per_layer_bytes * self.layers

    @property
    def total_bytes(self) -> int:
        return self.layers_bytes + self.output_bytes + self.weight_copies_bytes


def activation_bytes_for(precision: str) -> int:
    """Bytes per stored activation for a precision name (fp32 4, bf16/fp16 2, fp64 8; mixed variants by compute)."""
    return ACTIVATION_BYTES[choice("precision", precision.split("_")[0], ACTIVATION_BYTES)]


def estimate_activations(
    cfg: TransformerConfig,
    micro_batch: int,
    seq_len: int,
    recompute: str = "none",
    activation_bytes: int = 2,
    dropout: bool | None = None,  # None: as the architecture was trained (cfg.dropout)
    attention: str = "flash",
) -> Activations:
    """Korthikanti et al. 2022 (no tensor/sequence parallelism), generalised to GQA, gated MLPs and experts.

    eager attention, 16-bit activations, 1-byte dropout masks and a GELU MLP of 4h: exactly the paper's
    sbh(34 + 5as/h) per layer. flash (torch SDPA, FlashAttention): the a*s^2 scores are never stored; the
    kernel keeps an fp32 log-sum-exp per head and token instead. Selective recomputation
    keeps 34sbh (drops the score terms); full recomputation keeps only each layer's input (sbh elements).
    """
    whole("micro-batch size", micro_batch, 1, MAX_BATCH)
    whole("sequence length", seq_len, 1, MAX_SEQ)
    whole("bytes per activation", activation_bytes, 1, 8)
    choice("recomputation", recompute, RECOMPUTE)
    choice("attention", attention, ATTENTION)
    s, b, h, a, e = seq_len, micro_batch, cfg.hidden, cfg.heads, activation_bytes
    if dropout is None:
        dropout = cfg.dropout
    mask = 1 if dropout else 0  # dropout keeps a 1-byte mask per element
    tokens = s * b
    if recompute == "full":
        per_layer = tokens * h * e  # only the layer input is stored; the rest is recomputed
    else:
        # Attention: QKV-matmul input h, Q, K and V, output-projection input (q wide), dropout mask h.
        attention_elements = h + cfg.q_dim + 2 * cfg.kv_dim + cfg.q_dim
        attention_bytes = tokens * (attention_elements * e + h * mask)
        # MLP: GELU stores fc1 input h, GELU input f, fc2 input f (+ mask h); a gated MLP stores input h,
        # gate f, up f, act(gate) f and their product f, in each of the experts a token is routed to.
        if cfg.gated_mlp:
            mlp_elements = h + 4 * cfg.ffn * max(1, cfg.experts_per_token)
        else:
            mlp_elements = h + 2 * cfg.ffn
        mlp = tokens * (mlp_elements * e + h * mask)
        norms = tokens * 2 * h * e  # inputs of the two norms
        per_layer = attention_bytes + mlp + norms
        if recompute == "none" and attention == "eager":
            # Softmax output (a s^2 b), and with dropout its mask (1 byte) and dropout output.
            per_layer += a * s * s * b * (e + (mask + e) * mask)
        elif recompute == "none":
            # The fused kernel keeps only an fp32 log-sum-exp per head and token; its output, laid out
            # (b, s, heads, head_dim), is the output projection's input already counted above.
            per_layer += tokens * a * 4
    # Outside the layers: final norm and output-projection inputs, fp32 (or wider) logits for the loss,
    # embedding dropout mask (Korthikanti et al. §4.3: 4sbh + 4sbv at 16 bits).
    output = tokens * (2 * h * e + max(4, e) * cfg.vocab_size + h * mask)
    return Activations(per_layer, cfg.layers, output, recompute, attention)


def registry_transformer(model: str, size: str, dataset: str) -> TransformerConfig | None:
    """ShardLab's GPT as a TransformerConfig (for activations); None for the image models."""
    from engine.estimate.exact import engine_param_shapes
    from engine.registry import MODELS

    if model != "gpt":
        return None
    preset = MODELS[model].presets[size]
    vocab = dict(engine_param_shapes(model, size, dataset))["token.weight"][0]
    w = preset["width"]
    return TransformerConfig(
        f"gpt/{size}", "gpt2", vocab, w, preset["layers"], preset["heads"], preset["heads"], 4 * w,
        preset["context"], False, source="engine/models.py GPT (untied head, no dropout)",
    )


def activations_for_spec(spec: dict) -> Activations | None:
    """What one rank of a ShardLab GPT run keeps for backward (torch SDPA: flash), None for image models.

    Each rank's micro-batch is global_batch // world size. bf16 runs store 16-bit activations; under DDP and
    ZeRO-1 (torch.autocast) every linear layer's weight is also cast and its 16-bit copy kept for backward,
    while FSDP2 (ZeRO-2/3) gathers the parameters in bf16 already. fp32 and fp64 runs store their own dtype.
    """
    from dataclasses import replace

    from engine.estimate.exact import engine_param_shapes

    arch = registry_transformer(spec["model"], spec["size"], spec["dataset"])
    if arch is None:
        return None
    world = spec.get("nproc", 1) * spec.get("nnodes", 1)
    micro_batch = max(1, spec["global_batch"] // world)
    precision = spec.get("precision", "fp32")
    act = estimate_activations(arch, micro_batch, arch.context, "none", activation_bytes_for(precision),
                               dropout=False, attention="flash")
    if precision == "bf16" and spec.get("strategy") in ("ddp", "zero1"):
        shapes = engine_param_shapes(spec["model"], spec["size"], spec["dataset"])
        linear = sum(math.prod(shape) for name, shape in shapes
                     if len(shape) == 2 and not name.startswith(("token.", "position.")))  # embeddings are not cast
        act = replace(act, weight_copies_bytes=2 * linear)
    return act
