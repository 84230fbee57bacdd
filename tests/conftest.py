"""Shared fixtures. Real torchrun jobs are slow to start (5-10 s on 2 cores), so the engine's
test runs are launched once per session, all at once, and every test reads what they wrote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every test that launches a run writes under a temporary folder, never into ./runs.
os.environ.setdefault("SHARDLAB_RUNS_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "shardlab-test-runs"))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("SHARDLAB_RUNS_DIR", str(path))
    return path
