"""Cached readers the pages share: every session and every rerun reads a run folder only when it changed.

Run state always comes from disk through engine.runstore; these caches only avoid re-reading it.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.run_data import UNREADABLE, MetricsTail, RunSnapshot, RunUnreadable, load_snapshot, metrics_csv, run_stamp, runs_dir
from engine import runstore

LIST_RUNS_TTL_S = 2.0  # a new run or a changed state shows within this; a page rerun costs no folder scan


@st.cache_data(ttl=LIST_RUNS_TTL_S, max_entries=8, show_spinner=False)
def _list_runs(root: str) -> list[dict]:
    return [_readable_or_not(entry) for entry in runstore.list_runs(Path(root))]


def _readable_or_not(entry: dict) -> dict:
    """A listed run whose spec is not a JSON object cannot be drawn: it is shown as unreadable, with why."""
    if entry.get("state") == UNREADABLE or isinstance(entry.get("spec"), dict):
        return entry
    return {**entry, "state": UNREADABLE, "error": "spec.json does not hold a JSON object"}


def list_runs() -> list[dict]:
    """Every run in the runs folder, newest first (runstore.list_runs, cached for a moment)."""
    return _list_runs(str(runs_dir()))


@st.cache_data(max_entries=512, show_spinner=False)
def _summary(run_dir: str, stamp: tuple) -> dict:  # stamp: re-read only when the run changed
    return runstore.summary(Path(run_dir))


def summary(run_id: str) -> dict:
    path = runs_dir() / run_id
    return _summary(str(path), run_stamp(path))


@st.cache_data(max_entries=8, show_spinner=False)
def _csv(run_dir: str, stamp: tuple) -> bytes:
    return metrics_csv(Path(run_dir))


def csv(run_id: str) -> bytes:
    path = runs_dir() / run_id
    return _csv(str(path), run_stamp(path))


@st.cache_resource(max_entries=32, show_spinner=False)
def metrics_tail(run_dir: str) -> MetricsTail:
    """One incremental reader per run, shared by every session watching it."""
    return MetricsTail(Path(run_dir))


def snapshots(labels: dict[str, str]) -> tuple[dict[str, RunSnapshot], dict[str, str]]:
    """Snapshots of several runs ({run id: label} in, {label: snapshot} out), and {run id: why} for unreadable ones."""
    found, unreadable = {}, {}
    for run_id, label in labels.items():
        path = runs_dir() / run_id
        try:
            found[label] = load_snapshot(path, metrics_tail(str(path)))
        except RunUnreadable as error:
            unreadable[run_id] = str(error)
    return found, unreadable
