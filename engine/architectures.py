"""Published transformer architectures as configurations: their parameter shapes and exact counts.

Shapes follow the module layout of the reference implementations (Hugging Face transformers 5.x),
so a count, DeepSpeed's "largest layer" and FSDP2's per-parameter shards all come from one list.
Nothing is allocated: a 1T-parameter model costs the same milliseconds as GPT-2. Hugging Face
`config.json` files are read as data only (JSON, size- and depth-capped), never executed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from engine.jsonfile import nesting_depth  # the one linear-scan depth check (json.loads recurses)

MAX_CONFIG_BYTES = 256 * 1024  # a real config.json is a few KB; anything larger is not one
MAX_CONFIG_DEPTH = 32  # nesting a real config.json never reaches; json.loads would recurse ~1,000 deep
FAMILIES = ("gpt2", "llama", "qwen2", "gemma", "phi3", "mixtral")


class ArchitectureError(ValueError):
    """A configuration that cannot be counted; the message says what to fix."""


@dataclass(frozen=True)
class TransformerConfig:
    """What parameter counts and activation estimates need to know about a decoder-only transformer."""

    name: str
    family: str  # one of FAMILIES: the module layout (see param_shapes)
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # < heads for grouped-query attention (Llama-2-70B, Llama-3, Mistral)
    ffn: int  # MLP inner width (per expert for mixtral): 4*hidden for GPT-2, 11008 for Llama-2-7B
    context: int  # learned position table size for gpt2; the trained sequence length otherwise
    tied_embeddings: bool  # GPT-2 and Gemma reuse the token table as the output head
    source: str = ""  # where the numbers come from
    dropout: bool = False  # trained with dropout (its 1-byte masks are activations too): GPT-2/3 yes, Llama no
    head_dim_override: int = 0  # Gemma's 256-wide heads (hidden/heads otherwise)
    experts: int = 0  # mixture of experts: experts per layer (0 = a dense MLP)
    experts_per_token: int = 0  # routed experts each token uses (the active parameters)
    head_bias: bool = False  # ShardLab's GPT has none either; kept for completeness of the layout

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ArchitectureError(f"unknown architecture family '{self.family}' ({', '.join(FAMILIES)})")
        for field in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "ffn", "context"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**9:
                raise ArchitectureError(f"{field} must be a whole number from 1 to 1e9 (got {value!r})")
        if not self.head_dim_override and self.hidden % self.heads:
            raise ArchitectureError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if self.heads % self.kv_heads:
            raise ArchitectureError(f"{self.heads} heads are not divisible by {self.kv_heads} key/value heads")
        if (self.family == "mixtral") != (self.experts > 0):
            raise ArchitectureError("experts are set exactly for mixtral (mixture-of-experts) layouts")
        if self.experts and not 1 <= self.experts_per_token <= self.experts:
            raise ArchitectureError(f"experts per token must be 1..{self.experts} (got {self.experts_per_token})")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of Q and of the attention output: hidden, except Gemma-7B (16 x 256 = 4096 on 3072)."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): equals q_dim without grouped-query attention."""
        return self.kv_heads * self.head_dim

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU/GeGLU (gate, up, down) rather than GPT-2's GELU MLP (fc, proj)."""
        return self.family != "gpt2"


Shapes = tuple[tuple[str, tuple[int, ...]], ...]


def param_shapes(cfg: TransformerConfig) -> Shapes:
    """(name, shape) of every trainable parameter in `model.parameters()` order, as transformers 5 builds it.

    A tied output head shares the token table, so it is not listed (parameters() yields it once).
    """
    h, f, q, kv, V = cfg.hidden, cfg.ffn, cfg.q_dim, cfg.kv_dim, cfg.vocab_size
    shapes: list[tuple[str, tuple[int, ...]]] = []
    add = lambda name, *shape: shapes.append((name, tuple(shape)))
    if cfg.family == "gpt2":
        # GPT2LMHeadModel: Conv1D weights are stored (in, out).
        add("transformer.wte.weight", V, h)
        add("transformer.wpe.weight", cfg.context, h)
        for i in range(cfg.layers):
            p = f"transformer.h.{i}."
            add(p + "ln_1.weight", h), add(p + "ln_1.bias", h)
            add(p + "attn.c_attn.weight", h, q + 2 * kv), add(p + "attn.c_attn.bias", q + 2 * kv)
            add(p + "attn.c_proj.weight", q, h), add(p + "attn.c_proj.bias", h)
            add(p + "ln_2.weight", h), add(p + "ln_2.bias", h)
            add(p + "mlp.c_fc.weight", h, f), add(p + "mlp.c_fc.bias", f)
            add(p + "mlp.c_proj.weight", f, h), add(p + "mlp.c_proj.bias", h)
        add("transformer.ln_f.weight", h), add("transformer.ln_f.bias", h)
    else:
        add("model.embed_tokens.weight", V, h)
        for i in range(cfg.layers):
            p = f"model.layers.{i}."
            if cfg.family == "phi3":  # fused projections
                add(p + "self_attn.o_proj.weight", h, q)
                add(p + "self_attn.qkv_proj.weight", q + 2 * kv, h)
                add(p + "mlp.gate_up_proj.weight", 2 * f, h)
                add(p + "mlp.down_proj.weight", h, f)
            else:
                for proj, out in (("q", q), ("k", kv), ("v", kv)):
                    add(p + f"self_attn.{proj}_proj.weight", out, h)
                    if cfg.family == "qwen2":  # Qwen2 keeps biases on q, k and v (not on o)
                        add(p + f"self_attn.{proj}_proj.bias", out)
                add(p + "self_attn.o_proj.weight", h, q)
                if cfg.family == "mixtral":  # a router, then the experts as two fused 3-d tensors
                    add(p + "mlp.gate.weight", cfg.experts, h)
                    add(p + "mlp.experts.gate_up_proj", cfg.experts, 2 * f, h)
                    add(p + "mlp.experts.down_proj", cfg.experts, h, f)
                else:
                    add(p + "mlp.gate_proj.weight", f, h), add(p + "mlp.up_proj.weight", f, h)
                    add(p + "mlp.down_proj.weight", h, f)
            add(p + "input_layernorm.weight", h), add(p + "post_attention_layernorm.weight", h)
        add("model.norm.weight", h)
    if not cfg.tied_embeddings:
        add("lm_head.weight", V, h)
        if cfg.head_bias:
            add("lm_head.bias", V)
    return tuple(shapes)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def param_count(cfg: TransformerConfig) -> int:
    """Exact trainable parameter count (every expert counted: what memory holds)."""
    return sum(param_terms(cfg).values())


_TERM_OF = (("embeddings", r"\.(wte|wpe|embed_tokens)\."), ("head", r"^lm_head\."), ("norms", r"(ln_|norm)"),
            ("attention", r"(attn\.)"), ("mlp", r"mlp\."))


def param_terms(cfg: TransformerConfig) -> dict[str, int]:
    """The count split into embeddings, attention, MLP, norms and head (so a page can show where Ψ lives)."""
    terms = dict.fromkeys(("embeddings", "attention", "mlp", "norms", "head"), 0)
    for name, shape in param_shapes(cfg):
        term = next(t for t, pattern in _TERM_OF if re.search(pattern, name))
        terms[term] += _numel(shape)
    return terms


def active_param_count(cfg: TransformerConfig) -> int:
    """Parameters one token computes with: a mixture of experts routes each token to experts_per_token experts."""
    total = param_count(cfg)
    if not cfg.experts:
        return total
    per_expert = 3 * cfg.hidden * cfg.ffn
    return total - cfg.layers * (cfg.experts - cfg.experts_per_token) * per_expert


def largest_layer_params(shapes: Shapes) -> int:
    """DeepSpeed's "largest layer": the most parameters any one module holds directly (its model_to_params)."""
    modules: dict[str, int] = {}
    for name, shape in shapes:
        module = name.rsplit(".", 1)[0]
        modules[module] = modules.get(module, 0) + _numel(shape)
    return max(modules.values(), default=0)


_BLOCK = re.compile(r"^(?:transformer\.h|model\.layers|blocks)\.(\d+)\.")


def largest_unit_params(shapes: Shapes) -> int:
    """FSDP2's largest unit when each transformer block is wrapped and the root keeps the rest (embeddings, head)."""
    units: dict[str, int] = {}
    for name, shape in shapes:
        match = _BLOCK.match(name)
        key = match.group(0) if match else "root"
        units[key] = units.get(key, 0) + _numel(shape)
    return max(units.values(), default=0)


def _gpt2(name: str, hidden: int, layers: int, heads: int, context: int = 1024, source: str = "") -> TransformerConfig:
    return TransformerConfig(name, "gpt2", 50257, hidden, layers, heads, heads, 4 * hidden, context, True, source, True)


def _llama(name, vocab, hidden, layers, heads, kv_heads, ffn, context, source, family="llama", tied=False, **extra):
    return TransformerConfig(name, family, vocab, hidden, layers, heads, kv_heads, ffn, context, tied, source, **extra)


_HF = "Hugging Face config.json of "
ARCHITECTURES: dict[str, TransformerConfig] = {
    "gpt2": _gpt2("GPT-2 small", 768, 12, 12, source=_HF + "openai-community/gpt2"),
    "gpt2-medium": _gpt2("GPT-2 medium", 1024, 24, 16, source=_HF + "openai-community/gpt2-medium"),
    "gpt2-large": _gpt2("GPT-2 large", 1280, 36, 20, source=_HF + "openai-community/gpt2-large"),
    "gpt2-xl": _gpt2("GPT-2 XL", 1600, 48, 25, source=_HF + "openai-community/gpt2-xl"),
    # GPT-3 is GPT-2's layout at 96 x 12288 with a 2048 context (Brown et al. 2020, Table 2.1).
    "gpt3-175b": _gpt2("GPT-3 175B", 12288, 96, 96, context=2048, source="Brown et al. 2020, Table 2.1"),
    "llama-2-7b": _llama("Llama-2 7B", 32000, 4096, 32, 32, 32, 11008, 4096, _HF + "meta-llama/Llama-2-7b-hf"),
    "llama-2-13b": _llama("Llama-2 13B", 32000, 5120, 40, 40, 40, 13824, 4096, _HF + "meta-llama/Llama-2-13b-hf"),
    "llama-2-70b": _llama("Llama-2 70B", 32000, 8192, 80, 64, 8, 28672, 4096, _HF + "meta-llama/Llama-2-70b-hf"),
    "llama-3-8b": _llama("Llama-3 8B", 128256, 4096, 32, 32, 8, 14336, 8192, _HF + "meta-llama/Meta-Llama-3-8B"),
    "llama-3-70b": _llama("Llama-3 70B", 128256, 8192, 80, 64, 8, 28672, 8192, _HF + "meta-llama/Meta-Llama-3-70B"),
    "mistral-7b": _llama("Mistral 7B", 32000, 4096, 32, 32, 8, 14336, 32768, _HF + "mistralai/Mistral-7B-v0.1"),
    "qwen2-0.5b": _llama("Qwen2 0.5B", 151936, 896, 24, 14, 2, 4864, 32768, _HF + "Qwen/Qwen2-0.5B", "qwen2", True),
    "qwen2-7b": _llama("Qwen2 7B", 152064, 3584, 28, 28, 4, 18944, 32768, _HF + "Qwen/Qwen2-7B", "qwen2"),
    "mixtral-8x7b": _llama("Mixtral 8x7B", 32000, 4096, 32, 32, 8, 14336, 32768, _HF + "mistralai/Mixtral-8x7B-v0.1",
                           "mixtral", experts=8, experts_per_token=2),
    "gemma-2b": _llama("Gemma 2B", 256000, 2048, 18, 8, 1, 16384, 8192, _HF + "google/gemma-2b", "gemma", True,
                       head_dim_override=256),
    "gemma-7b": _llama("Gemma 7B", 256000, 3072, 28, 16, 16, 24576, 8192, _HF + "google/gemma-7b", "gemma", True,
                       head_dim_override=256),
    "phi3-mini": _llama("Phi-3 mini 4k", 32064, 3072, 32, 32, 32, 8192, 4096,
                        _HF + "microsoft/Phi-3-mini-4k-instruct", "phi3"),
}

# The ZeRO paper (Rajbhandari et al. 2020) sizes its examples by Ψ alone: no layout is given.
NOMINAL_MODELS: dict[str, int] = {
    "zero-7.5b": 7_500_000_000,
    "zero-128b": 128_000_000_000,
    "zero-1t": 1_000_000_000_000,
}


def architecture(name: str) -> TransformerConfig:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture '{name}' (choose {', '.join(ARCHITECTURES)})"
        ) from None


# ------------------------------------------------------------------------------ config.json

# Keys that never change the parameter count or the memory (ids, numerics, rope, generation settings).
_NEUTRAL_KEYS = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "bos_token_id",
    "eos_token_id", "pad_token_id", "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "initializer_range", "hidden_act", "hidden_activation", "activation_function",
    "use_cache", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_type", "summary_use_proj",
    "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "task_specific_params",
    "scale_attn_weights", "reorder_and_upcast_attn", "scale_attn_by_inverse_layer_idx", "sliding_window",
    "use_sliding_window", "max_window_layers", "pretraining_tp", "output_router_logits", "router_aux_loss_coef",
    "router_jitter_noise", "original_max_position_embeddings", "partial_rotary_factor", "embd_pdrop",
    "name_or_path", "_name_or_path", "bos_token", "eos_token", "auto_map", "quantization_config", "n_ctx",
    "attention_bias", "mlp_bias", "tie_word_embeddings", "use_return_dict", "layer_types",
}


def _int_field(config: dict, used: set, *names: str, default: int | None = None) -> int:
    for key in names:
        if key in config:
            used.add(key)
        if key in config and config[key] is not None:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArchitectureError(f"config field '{key}' must be a whole number (got {value!r})")
            return value
    if default is None:
        raise ArchitectureError(f"config.json lacks '{names[0]}'")
    return default


def from_hf_config(config: dict, name: str = "uploaded config") -> TransformerConfig:
    """A TransformerConfig from a parsed Hugging Face config.json; keys it does not use are listed, not guessed at."""
    cfg, _ = read_hf_config(config, name)
    return cfg


def read_hf_config(config: dict, name: str = "uploaded config") -> tuple[TransformerConfig, tuple[str, ...]]:
    """(the configuration, the keys of config.json it did not use and does not know to be neutral)."""
    if not isinstance(config, dict):
        raise ArchitectureError("config.json must hold a JSON object")
    model_type = config.get("model_type")
    used: set[str] = set()
    source = f"uploaded config.json ({model_type})"
    if model_type == "gpt2":
        hidden = _int_field(config, used, "n_embd", "hidden_size")
        heads = _int_field(config, used, "n_head", "num_attention_heads")
        cfg = TransformerConfig(
            name, "gpt2", _int_field(config, used, "vocab_size"), hidden,
            _int_field(config, used, "n_layer", "num_hidden_layers"), heads, heads,
            _int_field(config, used, "n_inner", default=4 * hidden),  # n_inner: null means 4*hidden
            _int_field(config, used, "n_positions", "n_ctx"),
            bool(config.get("tie_word_embeddings", True)), source=source,
            dropout=any(config.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
        )
    elif model_type in ("llama", "mistral", "qwen2", "gemma", "phi3", "mixtral"):
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise ArchitectureError(f"{model_type} configs with attention_bias or mlp_bias are not supported")
        family = "llama" if model_type == "mistral" else model_type
        heads = _int_field(config, used, "num_attention_heads")
        hidden = _int_field(config, used, "hidden_size")
        head_dim = config.get("head_dim")
        used.add("head_dim")
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1):
            raise ArchitectureError(f"config field 'head_dim' must be a whole number (got {head_dim!r})")
        if head_dim is not None and head_dim != hidden // heads and family != "gemma":
            raise ArchitectureError(f"head_dim {head_dim} differs from hidden/heads = {hidden // heads}: "
                                    f"supported for gemma only")
        experts = {}
        if family == "mixtral":
            experts = dict(experts=_int_field(config, used, "num_local_experts"),
                           experts_per_token=_int_field(config, used, "num_experts_per_tok"))
        cfg = TransformerConfig(
            name, family, _int_field(config, used, "vocab_size"), hidden,
            _int_field(config, used, "num_hidden_layers"), heads,
            _int_field(config, used, "num_key_value_heads", default=heads),
            _int_field(config, used, "intermediate_size"),
            _int_field(config, used, "max_position_embeddings", default=4096),
            bool(config.get("tie_word_embeddings", family == "gemma")),  # Gemma ties by default
            source=source, dropout=bool(config.get("attention_dropout", 0.0)),
            head_dim_override=head_dim if family == "gemma" and head_dim else 0, **experts,
        )
    elif model_type is None:
        raise ArchitectureError(f"config.json has no 'model_type' (supported: {', '.join(SUPPORTED_TYPES)})")
    else:
        raise ArchitectureError(f"unsupported model_type '{model_type}' (supported: {', '.join(SUPPORTED_TYPES)})")
    unknown = tuple(sorted(k for k in config if k not in used and k not in _NEUTRAL_KEYS))
    return cfg, unknown


SUPPORTED_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "phi3", "mixtral")


def parse_hf_config(raw: bytes | str, name: str = "uploaded config") -> TransformerConfig:
    """Parses an uploaded config.json: size- and depth-capped JSON only, then `from_hf_config`."""
    return read_hf_config_bytes(raw, name)[0]


def read_hf_config_bytes(raw: bytes | str, name: str = "uploaded config") -> tuple[TransformerConfig, tuple[str, ...]]:
    """`parse_hf_config` that also returns the unused keys (to report them)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ArchitectureError(f"config.json is {len(raw):,} bytes; at most {MAX_CONFIG_BYTES:,} are accepted")
    if nesting_depth(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw) > MAX_CONFIG_DEPTH:
        raise ArchitectureError(f"config.json nests deeper than {MAX_CONFIG_DEPTH} levels: not a model config")
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArchitectureError(f"config.json is not valid JSON: {err}") from None
    return read_hf_config(config, name)
