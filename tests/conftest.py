"""Shared fixtures. Real torchrun jobs are slow to start (5-10 s on 2 cores), so the engine's
test runs are launched once per session, all at once, and every test reads what they wrote."""

from __future__ import annotations

import os
from pathlib import Path

import subprocess
import sys

import pytest

from engine import launcher, runstore
from engine.runqueue import MAX_ACTIVE_ENV
from engine.spec import JobSpec

# Every test that launches a run writes under a temporary folder, never into ./runs.
os.environ.setdefault("SHARDLAB_RUNS_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "shardlab-test-runs"))
# No warm standby (engine/standby.py) behind the pages under test: only a test that asks for one gets one.
os.environ.setdefault("SHARDLAB_STANDBY", "0")


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(path))
    return path


STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
RANKS = (2, 4)
BASE = dict(model="mlp", size="tiny", dataset="digits", steps=20, global_batch=16, lr=1e-3, optimizer="adam",
            precision="fp32", save_final_params=True)


@pytest.fixture(scope="session")
def engine_runs(tmp_path_factory):
    """Nine runs launched together (the launch queue runs three at a time): a one-process full-batch reference, and every strategy at 2 and 4 ranks.
    One of them goes through the CLI, as a user on a cluster would start it."""
    root = tmp_path_factory.mktemp("engine-runs")
    # The launch queue runs one CPU run at a time by default; these tiny runs share the machine three at a time.
    os.environ[MAX_ACTIVE_ENV] = "3"
    try:
        ids = {("reference", 1): launcher.launch(JobSpec(strategy="ddp", nproc=1, **BASE), root)}
        for strategy in STRATEGIES:
            for n in RANKS:
                if (strategy, n) == ("zero3", 4):
                    continue
                ids[(strategy, n)] = launcher.launch(JobSpec(strategy=strategy, nproc=n, **BASE), root)
        cli = subprocess.run(
            [sys.executable, "-m", "engine", "train", "--strategy", "zero3", "--nproc", "4", "--model", "mlp",
             "--size", "tiny", "--steps", "20", "--batch", "16", "--save-final-params", "--runs-dir", str(root)],
            capture_output=True, text=True, check=True,
        )
        ids[("zero3", 4)] = cli.stdout.strip()
        for run_id in ids.values():
            status = launcher.wait(run_id, root, timeout_s=400)
            assert status["state"] == "succeeded", (run_id, status, runstore.log_tail(root / run_id))
    finally:
        os.environ.pop(MAX_ACTIVE_ENV, None)
    return {key: root / run_id for key, run_id in ids.items()}


@pytest.fixture(autouse=True)
def full_error_details_in_apptest():
    """The served app redacts exceptions (client.showErrorDetails = "none" in app/.streamlit/config.toml, which
    AppTest also reads through the root link): tests want the real message when a page raises."""
    from streamlit import config

    before = config.get_option("client.showErrorDetails"), config.get_where_defined("client.showErrorDetails")
    # Set as a flag would set it: an explicit choice, which app/serving.py accepts.
    config.set_option("client.showErrorDetails", "full", where_defined="command-line argument or environment variable")
    yield
    config.set_option("client.showErrorDetails", before[0], where_defined=before[1])
