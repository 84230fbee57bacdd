"""Cross-check against transformers (a test-only dependency): every family's parameter names, shapes and
counts as transformers builds them on the meta device (nothing allocated), from the same config.json."""

import json

import pytest

from engine.architectures import ARCHITECTURES, param_count, param_shapes, read_hf_config_bytes

transformers = pytest.importorskip("transformers")  # pinned in requirements-dev.txt
torch = pytest.importorskip("torch")

TINY = {  # small but complete: GQA, biases, tied/untied heads, experts, a wide head_dim
    "gpt2": dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4),
    "llama": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64),
    "mistral": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=1, max_position_embeddings=64),
    "qwen2": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True),
    "mixtral": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64),
    "gemma": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=32, max_position_embeddings=64),
    "phi3": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                 pad_token_id=0, eos_token_id=0, bos_token_id=0),
}


def meta_shapes(model_type: str, fields: dict) -> list[tuple[str, tuple[int, ...]]]:
    config = transformers.AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_shapes_equal_transformers(model_type):
    fields = TINY[model_type]
    cfg, _ = read_hf_config_bytes(json.dumps({"model_type": model_type, **fields}))
    assert list(param_shapes(cfg)) == meta_shapes(model_type, fields)


FULL = {  # published configurations, by the fields that size them
    "qwen2-7b": ("qwen2", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)),
    "mixtral-8x7b": ("mixtral", dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                                     num_experts_per_tok=2)),
    "gemma-7b": ("gemma", dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                               num_attention_heads=16, num_key_value_heads=16, head_dim=256)),
    "phi3-mini": ("phi3", dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)),
    "llama-2-7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32)),
    "gpt2": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_counts_equal_transformers(name):
    model_type, fields = FULL[name]
    theirs = sum(torch.Size(shape).numel() for _, shape in meta_shapes(model_type, fields))
    assert param_count(ARCHITECTURES[name]) == theirs
