"""Parameter counts from configurations equal the published ones; uploaded config.json files are parsed safely."""

import json

import pytest

from engine.architectures import (
    ARCHITECTURES,
    MAX_CONFIG_BYTES,
    NOMINAL_MODELS,
    PUBLISHED_COUNTS,
    ArchitectureError,
    architecture,
    param_count,
    param_terms,
    parse_hf_config,
)

# Hugging Face config.json files as published (only the fields that size the model, plus a few others).
GPT2_CONFIG = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
    "n_ctx": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "resid_pdrop": 0.1,
    "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new",
}
LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "float16",
}
MISTRAL_CONFIG = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 32768, "sliding_window": 4096, "tie_word_embeddings": False,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_count_equals_the_published_count(name):
    assert param_count(ARCHITECTURES[name]) == PUBLISHED_COUNTS[name]


def test_the_two_counts_named_in_the_issue():
    assert param_count(architecture("gpt2")) == 124_439_808
    assert param_count(architecture("llama-2-7b")) == 6_738_415_616


def test_gpt3_matches_its_rounded_published_size():
    # Brown et al. publish "175.0B"; the GPT-2 layout at 96 x 12288 gives 174.6B (within 0.3%).
    count = param_count(architecture("gpt3-175b"))
    assert count == 174_604_259_328
    assert abs(count - 175.0e9) / 175.0e9 < 0.003


def test_zero_paper_examples_are_nominal_sizes():
    assert NOMINAL_MODELS == {"zero-7.5b": 7.5e9, "zero-128b": 128e9, "zero-1t": 1e12}


def test_terms_add_up_and_tied_embeddings_cost_nothing():
    terms = param_terms(architecture("gpt2"))
    assert sum(terms.values()) == 124_439_808 and terms["head"] == 0
    assert param_terms(architecture("llama-2-7b"))["head"] == 32000 * 4096


@pytest.mark.parametrize(
    "config, expected",
    [(GPT2_CONFIG, 124_439_808), (LLAMA2_7B_CONFIG, 6_738_415_616), (MISTRAL_CONFIG, 7_241_732_096)],
)
def test_uploaded_configs_count_exactly(config, expected):
    cfg = parse_hf_config(json.dumps(config).encode())
    assert param_count(cfg) == expected


def test_uploaded_config_keeps_its_shape():
    cfg = parse_hf_config(json.dumps(MISTRAL_CONFIG))
    assert (cfg.family, cfg.kv_heads, cfg.kv_dim, cfg.dropout) == ("llama", 8, 1024, False)
    assert parse_hf_config(json.dumps(GPT2_CONFIG)).dropout is True


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"model_type": "t5", "d_model": 512}).encode(), "unsupported model_type 't5'"),
        (json.dumps({"hidden_size": 8}).encode(), "no 'model_type'"),
        (json.dumps({**LLAMA2_7B_CONFIG, "hidden_size": -4096}).encode(), "hidden"),
        (json.dumps({**LLAMA2_7B_CONFIG, "num_hidden_layers": "32"}).encode(), "whole number"),
        (json.dumps({k: v for k, v in LLAMA2_7B_CONFIG.items() if k != "intermediate_size"}).encode(), "intermediate_size"),
        (json.dumps({**LLAMA2_7B_CONFIG, "num_key_value_heads": 5}).encode(), "not divisible"),
        (b" " * (MAX_CONFIG_BYTES + 1), "at most"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_configs_raise_a_readable_value_error(raw, message):
    with pytest.raises(ArchitectureError, match=message) as caught:
        parse_hf_config(raw)
    assert isinstance(caught.value, ValueError)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="llama-2-7b"):
        architecture("llama-9")
