"""The engine-mode prediction equals, to the byte, the model-state bytes real torchrun runs measured on every rank.

The mlp runs (4 strategies x 2 and 4 ranks) are the engine tests' session runs (tests/conftest.py): torchrun
costs 5-10 s to start on 2 cores, so every real run serves every test that can read it. The bf16 and fp64
transformer runs are this module's own, started together.
"""

import pytest

from engine import launcher, runstore
from engine.estimate import compare_with_measured, estimate_for_spec
from engine.spec import STRATEGIES, JobSpec

GPT = "gpt/tiny/text"
CASES = [(strategy, nproc, "fp32") for strategy in STRATEGIES for nproc in (2, 4)] + [
    # Other dtypes: bf16 makes ZeRO-2's gathered params bf16 beside fp32 shards; fp64 doubles every term but Adam's step.
    ("zero2", 4, f"bf16 {GPT}"),
    ("zero1", 2, f"fp64 {GPT}"),
]


def spec_for(strategy: str, nproc: int, variant: str) -> JobSpec:
    precision, _, model = variant.partition(" ")
    model, size, dataset = (model or "mlp/tiny/digits").split("/")
    return JobSpec(model=model, size=size, dataset=dataset, strategy=strategy, nproc=nproc, steps=2, global_batch=16,
                   precision=precision)


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, engine_runs) -> dict:
    runs_dir = tmp_path_factory.mktemp("estimate-runs")
    own = [case for case in CASES if case[2] != "fp32"]
    run_ids = {case: launcher.launch(spec_for(*case), runs_dir=runs_dir) for case in own}
    finished = {}
    for case in CASES:
        if case in run_ids:
            status = launcher.wait(run_ids[case], runs_dir=runs_dir, timeout_s=600)
            path = runstore.run_dir(run_ids[case], runs_dir)
        else:
            path = engine_runs[case[:2]]
            status = runstore.read_status(path)
        finished[case] = (status, runstore.summary(path))
    return finished


@pytest.mark.torchrun
@pytest.mark.parametrize("strategy, nproc, variant", CASES)
def test_prediction_equals_measurement_on_every_rank(finished_runs, strategy, nproc, variant):
    status, summary = finished_runs[(strategy, nproc, variant)]
    assert status["state"] == "succeeded", status
    assert [r["rank"] for r in summary["per_rank"]] == list(range(nproc))
    spec = JobSpec.from_dict(summary["spec"])  # exactly what ran
    assert (spec.strategy, spec.nproc) == (strategy, nproc)
    rows = compare_with_measured(estimate_for_spec(spec), summary["per_rank"])
    assert len(rows) == 5 * nproc  # params, master, grads, optimizer, total per rank
    mismatches = [r for r in rows if r["measured_bytes"] != r["predicted_bytes"]]
    assert not mismatches, mismatches
