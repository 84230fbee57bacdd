"""The estimator against the ZeRO paper's numbers, Korthikanti et al.'s activation formula, torch's own
partitioning code, and its answers and CLI. GB = 1e9 bytes wherever the paper is quoted."""

import argparse
import json
import math
import time

import pytest
import torch

from engine.architectures import architecture
from engine.estimate import (
    GB,
    GIB,
    PRECISIONS,
    STAGES,
    EstimateError,
    Overheads,
    Scenario,
    add_estimate_arguments,
    comm_volume,
    engine_param_shapes,
    estimate_activations,
    estimate_engine_states,
    estimate_for_spec,
    estimate_memory,
    estimate_model_states,
    max_params_to_fit,
    min_ranks_to_fit,
    parse_count,
    ranks_curve,
    run_estimate_command,
    shard_rows,
    stage_rows,
    stage_terms,
    zero_redundancy_partition,
)
from engine.spec import JobSpec

PSI_7_5B = 7_500_000_000


def per_rank_gb(psi: int, n: int) -> list[float]:
    return [estimate_model_states(psi, n, stage, "bf16", "adam").total_bytes / GB for stage in STAGES]


# ------------------------------------------------------------------------------ the ZeRO paper


def test_figure_1_is_reproduced():
    # Rajbhandari et al. 2020, Figure 1: Ψ = 7.5B, N = 64, K = 12 -> 120, 31.4, 16.6, 1.9 GB per device.
    assert [round(x, 1) for x in per_rank_gb(PSI_7_5B, 64)] == [120.0, 31.4, 16.6, 1.9]


@pytest.mark.parametrize(
    "psi, n, paper_gb",
    [
        (7.5e9, 4, [120, 52.5, 41.3, 30]),
        (7.5e9, 16, [120, 35.6, 21.6, 7.5]),
        (7.5e9, 1024, [120, 30.1, 15.1, 0.12]),
        (128e9, 64, [2048, 536, 284, 32]),
        (128e9, 1024, [2048, 513, 257, 2]),
        (1e12, 64, [16000, 4187, 2218, 250]),
        (1e12, 1024, [16000, 4011, 2013, 15.6]),
    ],
)
def test_table_1_cells_are_reproduced(psi, n, paper_gb):
    # The paper prints three significant figures.
    assert per_rank_gb(int(psi), n) == pytest.approx(paper_gb, rel=5e-3, abs=5e-3)


def test_mixed_adam_follows_the_papers_formulas_term_by_term():
    psi, n = 1_000_000, 8
    stages = [estimate_model_states(psi, n, s) for s in STAGES]
    assert [s.total_bytes for s in stages] == [16 * psi, 4 * psi + 12 * psi // n, 2 * psi + 14 * psi // n, 16 * psi // n]
    ddp, zero1 = stages[0], stages[1]
    assert (ddp.params_bytes, ddp.grads_bytes, ddp.master_bytes, ddp.optimizer_bytes) == (2 * psi, 2 * psi, 4 * psi, 8 * psi)
    assert (zero1.master_bytes, zero1.optimizer_bytes) == (4 * psi // n, 8 * psi // n)


@pytest.mark.parametrize(
    "precision, optimizer, per_param",
    [
        ("fp32", "adam", 16), ("fp32", "adamw", 16), ("fp32", "sgd_momentum", 12), ("fp32", "sgd", 8),
        ("fp64", "adam", 32), ("bf16", "sgd", 8), ("fp16_fp32_grads", "adam", 18), ("bf16_fp32_grads", "sgd_momentum", 14),
    ],
)
def test_ddp_bytes_per_parameter(precision, optimizer, per_param):
    assert estimate_model_states(1000, 4, "ddp", precision, optimizer).total_bytes == per_param * 1000


def test_fp32_training_has_no_master_copy():
    states = estimate_model_states(1000, 2, 1, "fp32", "adam")
    assert (states.params_bytes, states.grads_bytes, states.optimizer_bytes, states.master_bytes) == (4000, 4000, 4000, 0)


def test_offload_moves_optimizer_state_and_master_to_the_host():
    on_gpu = estimate_model_states(10**9, 8, 2, "bf16", "adam")
    offloaded = estimate_model_states(10**9, 8, 2, "bf16", "adam", offload_optimizer=True)
    assert offloaded.optimizer_bytes == offloaded.master_bytes == 0
    assert offloaded.cpu_bytes == on_gpu.optimizer_bytes + on_gpu.master_bytes == 12 * 10**9 // 8
    assert offloaded.total_bytes == on_gpu.total_bytes - offloaded.cpu_bytes


def test_uneven_split_rounds_each_share_up():
    assert estimate_model_states(10, 4, 3, "fp32", "sgd").params_bytes == 3 * 4


def test_one_trillion_parameters_are_estimated_instantly():
    start = time.perf_counter()
    scenario = Scenario(10**12, 1024, activation_bytes=GIB)
    rows = stage_rows(scenario, capacity_bytes=80 * GIB)
    ranks_curve(scenario, [2**k for k in range(13)])
    elapsed = time.perf_counter() - start
    assert rows[3]["total_bytes"] == 16 * 10**12 // 1024 + GIB
    assert elapsed < 1.0  # measured ~1 ms; the bound only catches an accidental per-parameter loop


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: estimate_model_states(-5, 4, 0), "parameter count must be at least 1"),
        (lambda: estimate_model_states(1000, 0, 0), "ranks .* at least 1"),
        (lambda: estimate_model_states(1000, True, 0), "whole number"),
        (lambda: estimate_model_states(1000, 4, 4), "unknown stage 4"),
        (lambda: estimate_model_states(1000, 4, "zero4"), "unknown stage"),
        (lambda: estimate_model_states(1000, 4, 0, precision="int8"), "unknown precision 'int8'"),
        (lambda: estimate_model_states(1000, 4, 0, optimizer="lion"), "unknown optimizer 'lion'"),
        (lambda: Overheads(context_bytes=-1), "at least 0"),
        (lambda: estimate_activations(architecture("gpt2"), 0, 1024), "micro-batch"),
        (lambda: estimate_activations(architecture("gpt2"), 1, 1024, recompute="some"), "recomputation"),
        (lambda: parse_count("seven billion"), "cannot read a parameter count"),
        (lambda: parse_count("0"), "at least 1"),
        (lambda: Scenario(1000, 2, shapes=(("w", (2, 3)),), offload_optimizer=True), "does not offload"),
        (lambda: estimate_engine_states((("w", (4,)),), "zero5", 2), "unknown strategy"),
        (lambda: engine_param_shapes("gpt", "tiny", "digits"), "needs text data"),
    ],
)
def test_bad_inputs_raise_a_readable_value_error(call, message):
    with pytest.raises(EstimateError, match=message) as caught:
        call()
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("text, count", [("124M", 124_000_000), ("7.5B", PSI_7_5B), ("1T", 10**12), ("1e12", 10**12), ("8970", 8970)])
def test_parameter_counts_read_with_suffixes(text, count):
    assert parse_count(text) == count


# ------------------------------------------------------------------------------ answers


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("psi", [7_000_000_000, 70_000_000_000, 1_000_000_000_000])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_min_ranks_is_the_smallest_that_fits(stage, psi, precision):
    capacity, fixed = 80 * GIB, 3 * GIB
    need = min_ranks_to_fit(psi, stage, capacity, precision, "adam", fixed_bytes=fixed)
    fits = lambda n: estimate_memory(psi, n, stage, precision, activation_bytes=fixed).total_bytes <= capacity
    if need is None:
        assert not fits(10**6)
    else:
        assert fits(need) and (need == 1 or not fits(need - 1))


def test_min_ranks_answers_for_the_paper_example():
    # 7.5B on 32 GB devices: DDP never fits (120 GB); ZeRO-1 needs 30 + 90/N <= 32, i.e. N >= 45, but
    # at 45 the rounded-up share (166,666,667 elements x 12 bytes) overshoots by 4 bytes: 46.
    # ZeRO-2: 15 + 105/N <= 32 -> 7; ZeRO-3: 120/N <= 32 -> 4.
    answers = [min_ranks_to_fit(PSI_7_5B, s, 32 * GB) for s in STAGES]
    assert answers == [None, 46, 7, 4]


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("n", [1, 7, 64, 1024])
def test_max_params_is_the_largest_that_fits(stage, n):
    capacity, fixed = 80 * GIB, 2 * GIB
    psi = max_params_to_fit(n, stage, capacity, "bf16", "adam", fixed_bytes=fixed)
    total = lambda p: estimate_memory(p, n, stage, activation_bytes=fixed).total_bytes
    assert total(psi) <= capacity < total(psi + 1)


def test_nothing_fits_when_the_overheads_fill_the_gpu():
    assert max_params_to_fit(8, 3, GIB, fixed_bytes=2 * GIB) == 0
    assert min_ranks_to_fit(10**9, 3, GIB, fixed_bytes=2 * GIB) is None


def test_communication_volume_per_stage():
    psi = 1000
    assert [comm_volume(psi, s)["elements"] for s in STAGES] == [2 * psi, 2 * psi, 2 * psi, 3 * psi]
    assert [comm_volume(psi, s, "bf16")["bytes"] for s in STAGES] == [4 * psi, 4 * psi, 4 * psi, 6 * psi]
    # fp32 gradient accumulation: gradients travel in fp32, parameters in bf16.
    assert comm_volume(psi, 2, "bf16_fp32_grads")["bytes"] == 4 * psi + 2 * psi


# ------------------------------------------------------------------------------ activations


def test_activations_match_korthikanti_without_recomputation():
    cfg = architecture("gpt2")  # GELU MLP of 4h, dropout: the paper's setting
    s, b, h, a, L = 1024, 4, 768, 12, 12
    act = estimate_activations(cfg, b, s, "none", activation_bytes=2, attention="eager")
    assert act.per_layer_bytes == s * b * h * 34 + 5 * a * s * s * b  # sbh(34 + 5as/h)
    assert act.layers_bytes == L * act.per_layer_bytes
    assert act.output_bytes == 4 * s * b * h + 4 * s * b * cfg.vocab_size + s * b * h


def test_selective_and_full_recomputation():
    cfg, s, b, h = architecture("gpt2"), 1024, 4, 768
    assert estimate_activations(cfg, b, s, "selective").per_layer_bytes == 34 * s * b * h
    assert estimate_activations(cfg, b, s, "full").per_layer_bytes == 2 * s * b * h


def test_activations_without_dropout_and_with_gqa_swiglu():
    s, b = 2048, 1
    gpt2 = estimate_activations(architecture("gpt2"), b, s, "selective", dropout=False)
    assert gpt2.per_layer_bytes == 32 * s * b * 768  # 34 minus the two 1-byte masks
    llama = architecture("llama-3-8b")  # h 4096, kv 1024, ffn 14336, no dropout
    act = estimate_activations(llama, b, s, "selective")
    assert act.per_layer_bytes == s * b * 2 * (3 * 4096 + 2 * 1024 + 4096 + 4 * 14336 + 2 * 4096)


def test_activations_are_not_sharded_by_zero():
    rows = stage_rows(Scenario(10**9, 8, activation_bytes=5 * GIB))
    assert {r["activations_bytes"] for r in rows} == {5 * GIB}


# ------------------------------------------------------------------------------ the engine's own recipes


def test_fsdp2_shard_rows_follow_torch_chunk():
    from torch.distributed.fsdp._fully_shard._fsdp_common import _chunk_with_empty

    for d in range(0, 23):
        for n in range(1, 9):
            chunks = _chunk_with_empty(torch.empty(d, 3), n, dim=0)
            assert [shard_rows(d, n, r) for r in range(n)] == [c.shape[0] for c in chunks], (d, n)
    assert [shard_rows(10, 4, r) for r in range(4)] == [3, 3, 3, 1]


@pytest.mark.parametrize("model, size, dataset", [("mlp", "small", "digits"), ("cnn", "seed", "cifar10"), ("gpt", "small", "text")])
@pytest.mark.parametrize("ranks", [2, 3, 4, 8])
def test_zero1_partition_is_torchs(model, size, dataset, ranks):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    shapes = engine_param_shapes(model, size, dataset)
    params = [torch.empty(shape, device="meta") for _, shape in shapes]
    # Run torch's own _partition_parameters without a process group: it only reads these attributes.
    zero = object.__new__(ZeroRedundancyOptimizer)
    zero.world_size, zero.param_groups, zero._partition_parameters_cache = ranks, [{"params": params}], []
    theirs = [[id(p) for p in groups[0]["params"]] for groups in zero._partition_parameters()]
    ours = [[id(params[i]) for i in owned] for owned in zero_redundancy_partition([p.numel() for p in params], ranks)]
    assert ours == theirs


def test_engine_states_account_for_every_parameter_once():
    shapes = engine_param_shapes("gpt", "tiny", "text")
    psi = sum(math.prod(s) for _, s in shapes)
    n_params = len(shapes)
    ddp = estimate_engine_states(shapes, "ddp", 4)[0]
    assert (ddp.params_bytes, ddp.grads_bytes, ddp.optimizer_bytes, ddp.master_bytes) == (4 * psi, 4 * psi, 8 * psi + 4 * n_params, 0)
    zero1 = estimate_engine_states(shapes, "zero1", 4)
    assert sum(r.optimizer_bytes for r in zero1) == ddp.optimizer_bytes
    assert len({r.optimizer_bytes for r in zero1}) > 1  # whole parameters: the ranks are uneven
    zero2 = estimate_engine_states(shapes, "zero2", 4)
    assert all(r.params_bytes == 4 * psi for r in zero2) and sum(r.master_bytes for r in zero2) == 4 * psi
    zero3 = estimate_engine_states(shapes, "zero3", 4)
    assert sum(r.params_bytes for r in zero3) == 4 * psi and all(r.master_bytes == 0 for r in zero3)
    assert sum(r.optimizer_bytes for r in zero3) == 8 * psi + 4 * n_params * 4  # a step tensor per shard


def test_engine_precisions_and_optimizers():
    shapes = (("w", (6, 2)), ("b", (6,)))  # 18 elements, 2 tensors
    assert estimate_engine_states(shapes, "ddp", 2, "fp64", "adam")[0].optimizer_bytes == 18 * 16 + 2 * 4
    assert estimate_engine_states(shapes, "ddp", 2, "fp32", "sgd_momentum")[0].optimizer_bytes == 18 * 4
    assert estimate_engine_states(shapes, "ddp", 2, "fp32", "sgd")[0].optimizer_bytes == 0
    bf16 = estimate_engine_states(shapes, "zero2", 2, "bf16", "sgd")[0]
    assert (bf16.params_bytes, bf16.master_bytes) == (18 * 2, 9 * 4)  # bf16 compute params, fp32 shards


def test_engine_count_matches_the_registry_and_the_transformer_config():
    from engine.data import data_shape
    from engine.estimate import registry_transformer
    from engine.architectures import param_count as config_count
    from engine.models import param_count

    shapes = engine_param_shapes("gpt", "small", "text")
    meta_count = param_count("gpt", "small", data_shape("text", 128))
    assert sum(math.prod(s) for _, s in shapes) == meta_count == config_count(registry_transformer("gpt", "small", "text"))


def test_estimate_for_spec_uses_the_world_size():
    spec = JobSpec(strategy="zero3", nproc=4)
    assert len(estimate_for_spec(spec)) == 4
    assert estimate_for_spec(spec) == estimate_for_spec(json.loads(spec.to_json()))


# ------------------------------------------------------------------------------ CLI functions


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_estimate_arguments(parser)
    code = run_estimate_command(parser.parse_args(list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_has_per_rank_totals_and_terms(capsys):
    code, out, _ = run_cli(capsys, "--params", "7.5B", "--ranks", "64", "--gpu-mem", "80", "--json", "--no-overheads")
    report = json.loads(out)
    assert code == 0 and report["num_params"] == PSI_7_5B and report["mode"] == report["memory_model"] == "paper"
    totals = [stage["per_rank"][0]["total_bytes"] / GB for stage in report["stages"]]
    assert [round(t, 1) for t in totals] == [120.0, 31.4, 16.6, 1.9]
    # Identical ranks collapse into one entry that says which ranks it stands for.
    assert all(stage["per_rank"][0]["rank_range"] == [0, 63] and stage["per_rank"][0]["count"] == 64 for stage in report["stages"])
    assert {"params_bytes", "grads_bytes", "optimizer_bytes", "master_bytes"} <= set(report["stages"][1]["per_rank"][0])
    assert [s["fits"] for s in report["stages"]] == [False, True, True, True]


def test_cli_engine_mode_lists_uneven_ranks(capsys):
    code, out, _ = run_cli(capsys, "--model", "mlp", "--ranks", "4", "--stage", "zero1", "--json")
    report = json.loads(out)
    assert code == 0 and report["mode"] == "engine" and report["precision"] == "fp32"
    assert [(r["rank_range"], r["optimizer_bytes"]) for r in report["stages"][0]["per_rank"]] == [
        ([0, 1], 32772), ([2, 2], 5124), ([3, 3], 1116)]


def test_cli_table_and_config_file(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}))
    code, out, _ = run_cli(capsys, "--config", str(config), "--ranks", "8", "--batch", "8", "--recompute", "selective", "--gpu-mem", "24")
    assert code == 0 and "124.4M parameters (124,439,808)" in out and "ZeRO-3" in out and "Memory model: the ZeRO paper's" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--params=-7B"], "cannot read a parameter count"),
        (["--params", "7B", "--ranks", "0"], "--ranks must be from 1 to 1,000,000"),
        (["--params", "7B", "--stage", "5"], "unknown stage"),
        (["--params", "7B", "--precision", "int4"], "unknown precision"),
        (["--params", "7B", "--gpu-mem", "-1"], "--gpu-mem"),
        (["--params", "7B", "--batch", "4"], "activations need a transformer"),
        (["--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["--config", "/nonexistent/config.json"], "cannot read"),
    ],
)
def test_cli_bad_inputs_exit_2_with_a_message(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and message in err


def test_stage_terms_itemise_each_stage():
    terms = stage_terms(Scenario(PSI_7_5B, 64))
    assert len(terms) == 4 * 9
    zero1 = {t["term"]: t["bytes"] for t in terms if t["stage"] == "ZeRO-1"}
    assert sum(zero1.values()) == estimate_model_states(PSI_7_5B, 64, 1).total_bytes
    assert set(PRECISIONS) >= {"fp32", "fp64", "bf16", "fp16"}
