"""Parameter counts from configurations equal the published ones; uploaded config.json files are parsed safely."""

import json

import pytest

from engine.architectures import (
    ARCHITECTURES,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    NOMINAL_MODELS,
    ArchitectureError,
    active_param_count,
    architecture,
    largest_layer_params,
    largest_unit_params,
    param_count,
    param_shapes,
    param_terms,
    parse_hf_config,
    read_hf_config_bytes,
)

# Published counts (exact where the publisher gives an exact number: the model cards' safetensors totals,
# which transformers reproduces on the meta device below). Test data, not product code.
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
    "qwen2-0.5b": 494_032_768,
    "qwen2-7b": 7_615_616_512,
    "mixtral-8x7b": 46_702_792_704,
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "phi3-mini": 3_821_079_552,
}

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


def test_every_architecture_has_a_published_count():
    assert set(PUBLISHED_COUNTS) == set(ARCHITECTURES) - {"gpt3-175b"}


def test_mixture_of_experts_counts_total_and_active_parameters():
    mixtral = architecture("mixtral-8x7b")
    # Mistral AI: 46.7B parameters in all, 12.9B used per token (2 of 8 experts).
    assert param_count(mixtral) == 46_702_792_704
    assert active_param_count(mixtral) == 12_879_925_248
    assert active_param_count(architecture("llama-2-7b")) == param_count(architecture("llama-2-7b"))


def test_largest_layer_and_unit():
    shapes = param_shapes(architecture("llama-2-7b"))
    assert largest_layer_params(shapes) == 32000 * 4096  # the embedding (and the untied head)
    block = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert largest_unit_params(shapes) == 2 * 32000 * 4096 + 4096 > block  # the root: embeddings, head, final norm
    # Mixtral's experts live in one module: DeepSpeed's largest layer is all 8 experts of a layer.
    assert largest_layer_params(param_shapes(architecture("mixtral-8x7b"))) == 8 * 3 * 4096 * 14336


QWEN2_CONFIG = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                "max_position_embeddings": 131072, "tie_word_embeddings": False, "rope_theta": 1e6,
                "sliding_window": 131072, "use_sliding_window": False}
MIXTRAL_CONFIG = {"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768}
GEMMA_CONFIG = {"model_type": "gemma", "vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
                "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
                "max_position_embeddings": 8192, "hidden_activation": "gelu_pytorch_tanh"}
PHI3_CONFIG = {"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
               "max_position_embeddings": 4096, "tie_word_embeddings": False}


@pytest.mark.parametrize(
    "config, expected",
    [(QWEN2_CONFIG, 7_615_616_512), (MIXTRAL_CONFIG, 46_702_792_704), (GEMMA_CONFIG, 8_537_680_896),
     (PHI3_CONFIG, 3_821_079_552)],
)
def test_new_families_count_exactly_from_config_json(config, expected):
    cfg, unknown = read_hf_config_bytes(json.dumps(config))
    assert param_count(cfg) == expected and unknown == ()


def test_unknown_config_keys_are_reported_not_used():
    cfg, unknown = read_hf_config_bytes(json.dumps({**LLAMA2_7B_CONFIG, "num_experts": 64, "mystery": 1}))
    assert param_count(cfg) == 6_738_415_616 and unknown == ("mystery", "num_experts")


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"[" * 5000 + b"]" * 5000, "nests deeper"),
        (json.dumps({**GEMMA_CONFIG, "model_type": "llama"}).encode(), "gemma only"),
        (json.dumps({**MIXTRAL_CONFIG, "num_experts_per_tok": 9}).encode(), "experts per token"),
        (json.dumps({**LLAMA2_7B_CONFIG, "hidden_size": 10**12}).encode(), "at most|1 to 1e9"),
        (json.dumps({k: v for k, v in MIXTRAL_CONFIG.items() if k != "num_local_experts"}).encode(), "num_local_experts"),
    ],
)
def test_more_malformed_configs(raw, message):
    with pytest.raises(ArchitectureError, match=message):
        parse_hf_config(raw)
    assert MAX_CONFIG_DEPTH < 100
