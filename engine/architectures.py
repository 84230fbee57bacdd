"""Published transformer architectures as configurations, and their exact parameter counts.

Counting is arithmetic on the configuration: nothing is allocated, so a 1T-parameter
model costs the same microseconds as GPT-2. Hugging Face `config.json` files are
read as data only (JSON, size-capped), never executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_CONFIG_BYTES = 256 * 1024  # a real config.json is a few KB; anything larger is not one


class ArchitectureError(ValueError):
    """A configuration that cannot be counted; the message says what to fix."""


@dataclass(frozen=True)
class TransformerConfig:
    """What parameter counts and activation estimates need to know about a decoder-only transformer."""

    name: str
    family: str  # "gpt2" (LayerNorm, GELU MLP, biases, learned positions) | "llama" (RMSNorm, SwiGLU, no biases, RoPE)
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # < heads for grouped-query attention (Llama-2-70B, Llama-3, Mistral)
    ffn: int  # MLP inner width: 4*hidden for GPT-2, 11008 for Llama-2-7B
    context: int  # learned position table size for gpt2; the trained sequence length for llama
    tied_embeddings: bool  # GPT-2 reuses the token table as the output head
    source: str = ""  # where the numbers come from
    dropout: bool = False  # trained with dropout (its 1-byte masks are activations too): GPT-2/3 yes, Llama no

    def __post_init__(self) -> None:
        if self.family not in ("gpt2", "llama"):
            raise ArchitectureError(f"unknown architecture family '{self.family}' (gpt2 or llama)")
        for field in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "ffn", "context"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArchitectureError(f"{field} must be a whole number of at least 1 (got {value!r})")
        if self.hidden % self.heads:
            raise ArchitectureError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")
        if self.heads % self.kv_heads:
            raise ArchitectureError(f"{self.heads} heads are not divisible by {self.kv_heads} key/value heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): equals hidden without grouped-query attention."""
        return self.kv_heads * self.head_dim


def param_count(cfg: TransformerConfig) -> int:
    """Exact trainable parameter count, term by term as the reference implementations build them."""
    return sum(param_terms(cfg).values())


def param_terms(cfg: TransformerConfig) -> dict[str, int]:
    """The count split into embeddings, attention, MLP, norms and head (so a page can show where Ψ lives)."""
    h, L, f, kv = cfg.hidden, cfg.layers, cfg.ffn, cfg.kv_dim
    if cfg.family == "gpt2":
        # HF GPT2Model: wte, wpe; per block ln_1, c_attn (h->3h, bias), c_proj (h->h, bias), ln_2,
        # c_fc (h->f, bias), c_proj (f->h, bias); ln_f. The head is tied to wte, so it adds nothing.
        terms = {
            "embeddings": cfg.vocab_size * h + cfg.context * h,
            "attention": L * (h * (h + 2 * kv) + (h + 2 * kv) + h * h + h),
            "mlp": L * (h * f + f + f * h + h),
            "norms": L * 2 * (2 * h) + 2 * h,  # LayerNorm has a weight and a bias
        }
    else:
        # HF LlamaForCausalLM / MistralForCausalLM: embed_tokens; per layer q,k,v,o (no bias),
        # gate/up (h->f), down (f->h), two RMSNorms (weight only); final norm; untied lm_head.
        terms = {
            "embeddings": cfg.vocab_size * h,
            "attention": L * (h * h + 2 * h * kv + h * h),
            "mlp": L * 3 * h * f,
            "norms": L * 2 * h + h,
        }
    terms["head"] = 0 if cfg.tied_embeddings else cfg.vocab_size * h
    return terms


def _gpt2(name: str, hidden: int, layers: int, heads: int, context: int = 1024, source: str = "") -> TransformerConfig:
    return TransformerConfig(name, "gpt2", 50257, hidden, layers, heads, heads, 4 * hidden, context, True, source, True)


def _llama(name, vocab, hidden, layers, heads, kv_heads, ffn, context, source) -> TransformerConfig:
    return TransformerConfig(name, "llama", vocab, hidden, layers, heads, kv_heads, ffn, context, False, source)


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
}

# The ZeRO paper (Rajbhandari et al. 2020) sizes its examples by Ψ alone: no layout is given.
NOMINAL_MODELS: dict[str, int] = {
    "zero-7.5b": 7_500_000_000,
    "zero-128b": 128_000_000_000,
    "zero-1t": 1_000_000_000_000,
}

# Published counts the tests pin (exact where the publisher gives an exact number).
PUBLISHED_COUNTS: dict[str, int] = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
}


def architecture(name: str) -> TransformerConfig:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture '{name}' (choose {', '.join(ARCHITECTURES)})"
        ) from None


def _int_field(config: dict, *names: str, default: int | None = None) -> int:
    for key in names:
        if key in config and config[key] is not None:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArchitectureError(f"config field '{key}' must be a whole number (got {value!r})")
            return value
    if default is None:
        raise ArchitectureError(f"config.json lacks '{names[0]}'")
    return default


def from_hf_config(config: dict, name: str = "uploaded config") -> TransformerConfig:
    """A TransformerConfig from a parsed Hugging Face config.json (gpt2, llama and mistral)."""
    if not isinstance(config, dict):
        raise ArchitectureError("config.json must hold a JSON object")
    model_type = config.get("model_type")
    if model_type == "gpt2":
        hidden = _int_field(config, "n_embd", "hidden_size")
        return TransformerConfig(
            name,
            "gpt2",
            _int_field(config, "vocab_size"),
            hidden,
            _int_field(config, "n_layer", "num_hidden_layers"),
            _int_field(config, "n_head", "num_attention_heads"),
            _int_field(config, "n_head", "num_attention_heads"),
            _int_field(config, "n_inner", default=4 * hidden),  # n_inner: null means 4*hidden
            _int_field(config, "n_positions", "n_ctx"),
            bool(config.get("tie_word_embeddings", True)),
            source="uploaded config.json (gpt2)",
            dropout=any(config.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
        )
    if model_type in ("llama", "mistral"):
        heads = _int_field(config, "num_attention_heads")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise ArchitectureError("llama configs with attention_bias or mlp_bias are not supported")
        cfg = TransformerConfig(
            name,
            "llama",
            _int_field(config, "vocab_size"),
            _int_field(config, "hidden_size"),
            _int_field(config, "num_hidden_layers"),
            heads,
            _int_field(config, "num_key_value_heads", default=heads),
            _int_field(config, "intermediate_size"),
            _int_field(config, "max_position_embeddings", default=4096),
            bool(config.get("tie_word_embeddings", False)),
            source=f"uploaded config.json ({model_type})",
            dropout=bool(config.get("attention_dropout", 0.0)),
        )
        head_dim = config.get("head_dim")
        if head_dim is not None and head_dim != cfg.head_dim:
            raise ArchitectureError(f"head_dim {head_dim} differs from hidden/heads = {cfg.head_dim}: not supported")
        return cfg
    known = "gpt2, llama, mistral"
    if model_type is None:
        raise ArchitectureError(f"config.json has no 'model_type' (supported: {known})")
    raise ArchitectureError(f"unsupported model_type '{model_type}' (supported: {known})")


def parse_hf_config(raw: bytes | str, name: str = "uploaded config") -> TransformerConfig:
    """Parses an uploaded config.json: size-capped JSON only, then `from_hf_config`."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ArchitectureError(f"config.json is {len(raw):,} bytes; at most {MAX_CONFIG_BYTES:,} are accepted")
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArchitectureError(f"config.json is not valid JSON: {err}") from None
    return from_hf_config(config, name)

