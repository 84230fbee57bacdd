"""Generated inputs (hypothesis): the estimator answers or refuses in one line, never with a traceback."""

import argparse
import contextlib
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.estimate import GIB, EstimateError, Overheads, Scenario, add_estimate_arguments, run_estimate_command

NUMBERS = st.one_of(
    st.integers(-10, 10**7).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1e400", "-1e400", "1e15", "1e16", "7.5B", "124M", "1T", "0", "", " ", "1e6", "1000001", "0x10", "8e"]),
    st.text(max_size=8),
)
MODELS = st.sampled_from(["gpt2", "llama-2-7b", "mixtral-8x7b", "gemma-2b", "zero-7.5b", "mlp", "gpt", "nope"])


@st.composite
def argv(draw):
    # flag=value: a value that starts with '-' is the value, not a flag (as a user would write it)
    args = [f"--params={draw(NUMBERS)}"] if draw(st.booleans()) else [f"--model={draw(MODELS)}"]
    for flag, values in [
        ("--ranks", NUMBERS), ("--nodes", NUMBERS), ("--gpu-mem", NUMBERS), ("--host-mem", NUMBERS),
        ("--batch", st.sampled_from(["0", "1", "4", "-1", "1e9"])), ("--seq", NUMBERS),
        ("--stage", st.sampled_from(["all", "0", "1", "2", "3", "zero3", "9", "x"])),
        ("--memory-model", st.sampled_from(["paper", "deepspeed", "pytorch", "all", "other"])),
        ("--precision", st.sampled_from(["bf16", "fp32", "fp64", "fp16_fp32_grads", "int4"])),
        ("--attention", st.sampled_from(["flash", "eager", "x"])),
        ("--largest-layer-params", NUMBERS), ("--reserve-pct", NUMBERS), ("--context-gib", NUMBERS),
    ]:
        if draw(st.booleans()):
            args.append(f"{flag}={draw(values)}")
    for flag in ("--offload", "--offload-params", "--json", "--no-overheads"):
        if draw(st.booleans()):
            args.append(flag)
    return args


PARSER = argparse.ArgumentParser(exit_on_error=False)
add_estimate_arguments(PARSER)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv())
def test_the_cli_answers_or_refuses_in_one_line(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_estimate_command(PARSER.parse_args(args))
    out, err = out.getvalue(), err.getvalue()
    assert code in (0, 2)
    if code == 2:
        assert out == "" and err.startswith("estimate: ") and err.count("\n") == 1, err
    else:
        assert out and not err


@settings(max_examples=200, deadline=None)
@given(
    psi=st.integers(1, 10**15), ranks=st.integers(1, 10**6), stage=st.integers(0, 3),
    model=st.sampled_from(["paper", "deepspeed"]), capacity_gib=st.integers(1, 1024),
    context=st.integers(0, 4 * GIB), reserve=st.integers(0, 50),
)
def test_fit_answers_agree_with_the_estimate(psi, ranks, stage, model, capacity_gib, context, reserve):
    try:
        scenario = Scenario(psi, ranks, memory_model=model, overheads=Overheads(context, 0, reserve),
                            largest_layer_params=min(psi, 10**8))
    except EstimateError:
        return
    capacity = capacity_gib * GIB
    answers = scenario.answers(stage, capacity)
    assert answers["fits"] == (scenario.busiest(stage).total_bytes <= capacity)
    need = answers["min_ranks_to_fit"]
    if need is not None and need <= 10**6:
        assert scenario.busiest(stage, need).total_bytes <= capacity
        if need > 1:
            assert scenario.busiest(stage, need - 1).total_bytes > capacity
    most = answers["max_params_to_fit"]
    if 0 < most < 10**15:
        bigger = Scenario(most + 1, ranks, memory_model=model, overheads=Overheads(context, 0, reserve),
                          largest_layer_params=min(psi, 10**8, most + 1))
        assert bigger.busiest(stage).total_bytes > capacity or bigger.largest_layer_params != scenario.largest_layer_params
