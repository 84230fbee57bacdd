"""The three memory models side by side (paper, DeepSpeed, PyTorch), DeepSpeed's published formulas, activations
by precision and attention kernel, the cluster shape, overheads, and the estimator's limits."""

import argparse
import json

import pytest

from engine.architectures import architecture, largest_layer_params, param_count, param_shapes
from engine.estimate import (
    GB,
    GIB,
    MIB,
    EstimateError,
    Overheads,
    Scenario,
    add_estimate_arguments,
    deepspeed_cold_estimate,
    deepspeed_gathered_layer_bytes,
    deepspeed_model_states,
    engine_state_groups,
    estimate_activations,
    estimate_engine_states,
    estimate_model_states,
    resolve_source,
    run_estimate_command,
    stage_rows,
)

PSI = 7_500_000_000


# ------------------------------------------------------------------------------ DeepSpeed's formulas, from their text
# deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs and stage3.py
# estimate_zero3_model_states_mem_needs (0.19), written out again here so the test does not trust the module.

def ds_zero2(psi, per_node, nodes, offload):
    gpus = per_node * nodes
    if offload:
        return 2 * psi, int(psi * max(4 * gpus, 16) * 1.5)
    return 2 * psi + int(18 * psi / gpus), int(psi * 4 * per_node * 1.5)


def ds_zero3(psi, largest, per_node, nodes, offload, offload_params, zero_init=True):
    gpus, ll = per_node * nodes, 4 * largest
    if offload and offload_params:
        return ll, int(psi * (18 / nodes if zero_init else max(4 * per_node, 18 / nodes)) * 1.5)
    if offload:
        return ll + int(2 * psi / gpus), int(psi * (16 / nodes if zero_init else max(4 * per_node, 16 / nodes)) * 1.5)
    return ll + int(18 * psi / gpus), int((largest if zero_init else psi) * 4 * per_node * 1.5)


CLUSTERS = [(8, 1), (8, 8), (4, 2), (1, 1), (8, 16)]  # Ψ divides by each N


@pytest.mark.parametrize("per_node, nodes", CLUSTERS)
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_reproduces_deepspeeds_formula(per_node, nodes, offload):
    gpu, host = ds_zero2(PSI, per_node, nodes, offload)
    assert deepspeed_cold_estimate(PSI, 2, per_node, nodes, cpu_offload=offload) == {"gpu_bytes": gpu, "host_bytes_per_node": host}
    states = deepspeed_model_states(PSI, per_node * nodes, 2, "bf16", "adam", offload_optimizer=offload)
    assert states.total_bytes == gpu  # Ψ divides evenly here, so ceil(Ψ/N) and DeepSpeed's int() agree
    scenario = Scenario(PSI, per_node * nodes, offload_optimizer=offload, memory_model="deepspeed", nodes=nodes)
    assert scenario.busiest(2).total_bytes == gpu and scenario.host_bytes_per_node(2) == host


@pytest.mark.parametrize("per_node, nodes", CLUSTERS)
@pytest.mark.parametrize("offload, offload_params", [(False, False), (True, False), (True, True)])
def test_zero3_reproduces_deepspeeds_formula(per_node, nodes, offload, offload_params):
    largest = 32000 * 4096
    gpu, host = ds_zero3(PSI, largest, per_node, nodes, offload, offload_params)
    cold = deepspeed_cold_estimate(PSI, 3, per_node, nodes, largest, offload, offload_params)
    assert (cold["gpu_bytes"], cold["host_bytes_per_node"]) == (gpu, host)
    states = deepspeed_model_states(PSI, per_node * nodes, 3, "bf16", "adam", offload, offload_params)
    assert states.total_bytes + deepspeed_gathered_layer_bytes(3, largest) == gpu
    scenario = Scenario(PSI, per_node * nodes, offload_optimizer=offload, offload_params=offload_params,
                        memory_model="deepspeed", nodes=nodes, largest_layer_params=largest, prefetch_depth=0)
    assert scenario.busiest(3).total_bytes == gpu and scenario.host_bytes_per_node(3) == host


def test_zero3_without_zero_init_follows_the_formula_too():
    for offload, params in [(False, False), (True, False), (True, True)]:
        cold = deepspeed_cold_estimate(PSI, 3, 8, 2, 10**8, offload, params, zero_init=False)
        assert (cold["gpu_bytes"], cold["host_bytes_per_node"]) == ds_zero3(PSI, 10**8, 8, 2, offload, params, False)


def test_deepspeed_terms_name_the_18():
    # 2 (16-bit grads) + 4 (fp32 grads) + 4 (fp32 params) + 8 (Adam's two fp32 states) per parameter, over N.
    z2 = deepspeed_model_states(8000, 8, 2)
    assert (z2.params_bytes, z2.grads_bytes, z2.master_bytes, z2.optimizer_bytes) == (16000, 6000, 4000, 8000)
    z3 = deepspeed_model_states(8000, 8, 3, offload_optimizer=True, offload_params=True)
    assert z3.total_bytes == 0 and z3.cpu_params_bytes == 2000 and z3.cpu_bytes == 2000 + 16 * 1000


def test_paper_vs_deepspeed_for_the_papers_example():
    # 7.5B on 8 GPUs: the paper's ZeRO-2 is 2Ψ + 14Ψ/N, DeepSpeed's 2Ψ + 18Ψ/N (its fp32 gradient partition).
    paper = estimate_model_states(PSI, 8, 2).total_bytes
    deepspeed = deepspeed_model_states(PSI, 8, 2).total_bytes
    assert (paper, deepspeed) == (2 * PSI + 14 * PSI // 8, 2 * PSI + 18 * PSI // 8)
    assert round(1 - paper / deepspeed, 3) == 0.118  # the "12% below"


def test_offload_moves_grads_too_and_refuses_ddp():
    with pytest.raises(EstimateError, match="needs ZeRO"):
        deepspeed_model_states(10**9, 8, 0, offload_optimizer=True)
    with pytest.raises(EstimateError, match="DDP has no partition"):
        estimate_model_states(10**9, 8, 0, offload_optimizer=True)
    with pytest.raises(EstimateError, match="needs optimizer offload"):
        Scenario(10**9, 8, memory_model="deepspeed", offload_params=True)
    with pytest.raises(EstimateError, match="DeepSpeed's model only"):
        Scenario(10**9, 8, offload_optimizer=True, offload_params=True)
    rows = stage_rows(Scenario(10**9, 8, offload_optimizer=True, memory_model="deepspeed"))
    assert [r["offloaded"] for r in rows] == [False, True, True, True]  # DDP's row shows no offload


# ------------------------------------------------------------------------------ the PyTorch model


def test_pytorch_model_on_an_architecture_is_fsdp2s_padding():
    shapes = param_shapes(architecture("llama-2-7b"))
    psi = param_count(architecture("llama-2-7b"))
    groups = engine_state_groups(shapes, "zero3", 64, "fp32", "adam")
    assert sum((last - first + 1) * s.params_bytes for first, last, s in groups) == 4 * psi  # every element once
    assert len(groups) < 64  # runs of identical ranks
    # A million ranks cost milliseconds: the groups are found by a sweep, not rank by rank.
    huge = engine_state_groups(shapes, "zero3", 10**6, "fp32", "adam")
    assert huge[0][0] == 0 and huge[-1][1] == 10**6 - 1
    assert sum((last - first + 1) * s.params_bytes for first, last, s in huge) == 4 * psi


def test_zero1_groups_equal_the_per_rank_list():
    shapes = param_shapes(architecture("gpt2"))
    for ranks in (3, 8, 300):
        groups = engine_state_groups(shapes, "zero1", ranks)
        expanded = [s for first, last, s in groups for _ in range(first, last + 1)]
        assert expanded == estimate_engine_states(shapes, "zero1", ranks)
        assert len(expanded) == ranks


def test_pytorch_model_needs_shapes_and_refuses_offload():
    with pytest.raises(EstimateError, match="needs every parameter's shape"):
        Scenario(10**9, 8, memory_model="pytorch")
    shapes = param_shapes(architecture("gpt2"))
    with pytest.raises(EstimateError, match="does not offload"):
        Scenario(124_439_808, 8, "fp32", offload_optimizer=True, shapes=shapes)


def test_zero3_gathered_layers_and_prefetch():
    source = resolve_source(model="llama-2-7b")
    base = dict(num_params=source.num_params, ranks=8, shapes=source.shapes, largest_unit_params=source.largest_unit_params)
    one = Scenario(**base, precision="bf16", memory_model="pytorch", prefetch_depth=1).busiest(3).gathered_bytes
    two = Scenario(**base, precision="bf16", memory_model="pytorch", prefetch_depth=2).busiest(3).gathered_bytes
    unit = source.largest_unit_params
    assert one == 2 * 2 * unit + 4 * unit and two - one == 2 * unit  # bf16 gathered units, fp32 unsharded grads
    ds = Scenario(source.num_params, 8, memory_model="deepspeed", largest_layer_params=source.largest_layer_params)
    assert ds.busiest(3).gathered_bytes == 4 * source.largest_layer_params + 2 * source.largest_layer_params


# ------------------------------------------------------------------------------ activations


def test_activations_scale_with_precision():
    cfg = architecture("gpt2")
    bf16 = estimate_activations(cfg, 1, 1024, activation_bytes=2, dropout=False, attention="eager").total_bytes
    fp32 = estimate_activations(cfg, 1, 1024, activation_bytes=4, dropout=False, attention="eager").total_bytes
    logits = 1024 * 4 * cfg.vocab_size  # fp32 for the loss in both
    assert fp32 - logits == 2 * (bf16 - logits)


def test_flash_attention_stores_no_scores():
    cfg, s, b = architecture("llama-2-7b"), 4096, 1
    eager = estimate_activations(cfg, b, s, attention="eager")
    flash = estimate_activations(cfg, b, s, attention="flash")
    assert eager.per_layer_bytes - flash.per_layer_bytes == 32 * s * s * b * 2 - s * b * 32 * 4
    assert flash.per_layer_bytes < eager.per_layer_bytes / 2.5  # at s = 4096 the scores dominate eager


def test_dropout_masks_only_with_dropout():
    cfg = architecture("gpt2")
    on = estimate_activations(cfg, 2, 512, "selective", dropout=True)
    off = estimate_activations(cfg, 2, 512, "selective", dropout=False)
    assert on.per_layer_bytes - off.per_layer_bytes == 2 * 512 * 2 * 768  # two 1-byte masks of h per token


def test_mixture_of_experts_activations_count_routed_experts():
    cfg = architecture("mixtral-8x7b")
    act = estimate_activations(cfg, 1, 1, "selective")
    assert act.per_layer_bytes == 2 * (4096 + 4096 + 2 * 1024 + 4096 + 4096 + 2 * 4 * 14336 + 2 * 4096)


# ------------------------------------------------------------------------------ cluster, answers, overheads


def test_fewest_nodes_and_host_fit():
    scenario = Scenario(PSI, 64, nodes=8, memory_model="deepspeed", offload_optimizer=True,
                        host_capacity_bytes=512 * GIB)
    answers = scenario.answers(2, 80 * GIB)
    assert answers["fits"] and answers["min_ranks_to_fit"] == 1 and answers["min_nodes_to_fit"] == 1
    assert answers["fits_host"] is False  # DeepSpeed: 1.5 x 7.5B x max(4 x 64, 16) bytes per node
    with pytest.raises(EstimateError, match="do not split evenly"):
        Scenario(PSI, 64, nodes=7)


def test_overheads_are_counted_and_the_answers_respect_them():
    overheads = Overheads(context_bytes=GIB, comm_buffer_bytes=100 * MIB, reserve_pct=5)
    scenario = Scenario(PSI, 64, overheads=overheads)
    worst = scenario.busiest(3)
    allocated = worst.states.total_bytes + 100 * MIB
    assert worst.reserve_bytes == -(-allocated * 5 // 100)
    assert worst.total_bytes == allocated + worst.reserve_bytes + GIB
    answers = scenario.answers(3, 32 * GB)
    fits = lambda n: Scenario(PSI, n, overheads=overheads).busiest(3).total_bytes <= 32 * GB
    assert fits(answers["min_ranks_to_fit"]) and not fits(answers["min_ranks_to_fit"] - 1)
    most = answers["max_params_to_fit"]
    total = lambda psi: Scenario(psi, 64, overheads=overheads).busiest(3).total_bytes
    assert total(most) <= 32 * GB < total(most + 1)


def test_deepspeed_answers_are_exact_at_the_boundary():
    scenario = Scenario(PSI, 64, memory_model="deepspeed", largest_layer_params=10**8)
    answers = scenario.answers(3, 16 * GIB)
    need = answers["min_ranks_to_fit"]
    fits = lambda n: Scenario(PSI, n, memory_model="deepspeed", largest_layer_params=10**8).busiest(3).total_bytes <= 16 * GIB
    assert fits(need) and not fits(need - 1)


# ------------------------------------------------------------------------------ the CLI


def run_cli(capsys, *argv):
    parser = argparse.ArgumentParser()
    add_estimate_arguments(parser)
    code = run_estimate_command(parser.parse_args(list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_shows_all_three_memory_models(capsys):
    code, out, _ = run_cli(capsys, "--model", "llama-2-7b", "--nodes", "2", "--gpus-per-node", "8", "--memory-model", "all",
                           "--gpu-mem", "80", "--json")
    reports = json.loads(out)
    assert code == 0 and [r["memory_model"] for r in reports] == ["paper", "deepspeed", "pytorch"]
    assert all(r["ranks"] == 16 and r["nodes"] == 2 for r in reports)
    assert reports[1]["largest_layer_params"] == 32000 * 4096
    assert all("Leaves out" in r["memory_model_note"] for r in reports)


def test_cli_table_names_the_model_and_formats_the_answers(capsys):
    code, out, _ = run_cli(capsys, "--params", "7.5B", "--ranks", "64", "--gpu-mem", "32", "--memory-model", "deepspeed",
                           "--largest-layer-params", "1e8", "--offload")
    assert code == 0 and "Memory model: DeepSpeed's runtime" in out and "7.5B parameters (7,500,000,000)" in out
    assert "offloaded to host memory per rank" in out and "DDP offloads nothing" in out
    assert "communication buffers memory model default" in out


def test_cli_reports_unknown_config_keys(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                                  "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                                  "tie_word_embeddings": True, "num_experts": 60}))
    code, out, _ = run_cli(capsys, "--config", str(config))
    assert code == 0 and "494,032,768" in out and "config.json keys not used" in out and "num_experts" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--params", "1e400"], "beyond 1e+15"),
        (["--params", "2e15"], "beyond 1e+15"),
        (["--params", "7B", "--gpu-mem", "inf"], "--gpu-mem must be a positive number"),
        (["--params", "7B", "--gpu-mem", "nan"], "--gpu-mem must be a positive number"),
        (["--params", "7B", "--gpu-mem", "1e300"], "--gpu-mem must be between"),
        (["--params", "7B", "--ranks", "1000001"], "--ranks must be from 1 to 1,000,000"),
        (["--params", "7B", "--ranks", "1e400"], "--ranks must be a whole number"),
        (["--params", "7B", "--ranks", "eight"], "--ranks must be a whole number"),
        (["--params", "7B", "--nodes", "1000", "--gpus-per-node", "1001"], "beyond 1,000,000 GPUs"),
        (["--params", "7B", "--ranks", "8", "--nodes", "3"], "do not split evenly"),
        (["--params", "7B", "--stage", "0", "--offload"], "--offload needs ZeRO"),
        (["--params", "7B", "--memory-model", "pytorch"], "needs every parameter's shape"),
        (["--params", "7B", "--memory-model", "megatron"], "unknown memory model"),
        (["--params", "7B", "--optimizer", "lion"], "unknown optimizer"),
        (["--model", "gpt2", "--batch", "4", "--attention", "ring"], "unknown attention"),
        (["--model", "gpt2", "--batch", "1e9"], "--batch must be from 0"),
        (["--params", "7B", "--largest-layer-params", "8e9"], "cannot hold more than the model"),
        (["--params", "7B", "--context-gib", "inf"], "--context-gib"),
    ],
)
def test_cli_odd_inputs_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_cli_deep_config_is_one_line(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text("[" * 5000 + "]" * 5000)
    code, out, err = run_cli(capsys, "--config", str(config))
    assert code == 2 and "nests deeper" in err and err.count("\n") == 1


def test_a_million_ranks_is_quick_and_small(capsys):
    code, out, _ = run_cli(capsys, "--model", "llama-2-7b", "--ranks", "1000000", "--memory-model", "pytorch", "--json")
    assert code == 0 and len(out) < 200_000  # identical ranks collapse: no million-entry list
