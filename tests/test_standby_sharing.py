"""One standby serves a whole classroom's machine: a form with another shape does not replace a standby that
another browser session asked for moments ago (that would restart torchrun on every redraw of every form)."""

from __future__ import annotations

import json
import os

import psutil

from engine import standby
from engine.spec import JobSpec


def fake_standby(runs_dir, shape_spec: JobSpec, requester: str):
    """A standby folder whose 'supervisor' is this test process (alive, so usable), asked for by `requester`."""
    folder = standby.standby_root(runs_dir) / "fake"
    (folder / "ready").mkdir(parents=True)
    me = psutil.Process(os.getpid())
    (folder / "standby.json").write_text(json.dumps({
        "shape": standby.shape_of(shape_spec), "supervisor_pid": me.pid, "supervisor_create_time": me.create_time()}))
    (folder / "keepalive").write_text(requester)
    return folder


def test_another_sessions_fresh_standby_is_kept_and_this_form_starts_cold(tmp_path):
    two_ranks, one_rank = JobSpec(nproc=2), JobSpec(nproc=1)
    folder = fake_standby(tmp_path / "runs", two_ranks, requester="session-a")
    assert standby.ensure(one_rank, tmp_path / "runs", requester="session-b") is None
    assert not (folder / "claim").exists() and not (folder / "handoff.json").exists(), "it was not retired"
    # The same shape, from anyone, refreshes it and gets it.
    assert standby.ensure(two_ranks, tmp_path / "runs", requester="session-b") == folder


def test_a_standby_nobody_asked_for_lately_is_not_held(tmp_path):
    folder = fake_standby(tmp_path / "runs", JobSpec(nproc=2), requester="session-a")
    assert standby._held_by_another(folder, "session-b")
    assert not standby._held_by_another(folder, "session-a"), "its own requester may change the shape at once"
    old = os.stat(folder / "keepalive").st_mtime - standby.SHARED_HOLD_S - 1
    os.utime(folder / "keepalive", (old, old))
    assert not standby._held_by_another(folder, "session-b")
