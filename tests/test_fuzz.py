"""Property-based fuzzing (hypothesis) of the JobSpec and the CLI: whatever comes in, the answer is a spec or a
SpecError, an exit status of 0 or 2 with at most one line on stderr, never a traceback, and nothing launched."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import cli, launcher
from engine.spec import JobSpec, SpecError

FIELDS = [f.name for f in dataclasses.fields(JobSpec)]
SETTINGS = settings(max_examples=260, deadline=None, suppress_health_check=list(HealthCheck), database=None)

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=4), scalars, max_size=2)
plausible = {  # values of the right kind, so that some specs get deep into validation
    "model": st.sampled_from(["mlp", "cnn", "gpt", "resnet", ""]),
    "strategy": st.sampled_from(["ddp", "zero1", "zero2", "zero3", "zero4"]),
    "nproc": st.integers(-2, 70), "steps": st.integers(-1, 2_000_000), "global_batch": st.integers(-1, 5000),
    "lr": st.floats(-1, 20), "seed": st.integers(-5, 2**64), "stall_after_s": st.floats(-1, 1e6),
}


@st.composite
def spec_dicts(draw) -> dict:
    names = draw(st.lists(st.sampled_from(FIELDS + ["ranks", "__class__"]), max_size=6, unique=True))
    return {n: draw(plausible[n] if n in plausible and draw(st.booleans()) else json_values) for n in names}


@SETTINGS
@given(spec_dicts())
def test_any_spec_dict_is_a_valid_spec_or_a_spec_error_naming_a_field(values):
    try:
        spec = JobSpec.from_dict(values)
    except SpecError as error:
        assert str(error)
        assert error.field in FIELDS or error.field in ("", "ranks", "__class__")
        return
    assert JobSpec.from_dict(json.loads(spec.to_json())) == spec  # what validates round-trips


flags = ["--" + name.replace("_", "-") for name in FIELDS] + ["--batch", "--no-instrument", "--spec", "--runs-dir"]
words = st.sampled_from(["train", "summary", "runs", "cancel", "torchrun-command", "--json", "--nnodes", "2",
                         "--rdzv-endpoint", "h:1", "--node-rank", "-1", "--spec-out", "/tmp", "/dev/null",
                         "/dev/zero", "..", "../x", "x" * 300, "1e30", "nan", "inf", "-5", "0", "4", "zero3", "no",
                         "--help-me", "--", "''", "\x00", "é"]) | st.sampled_from(flags) | st.text(max_size=8)


@SETTINGS
@given(st.sampled_from(["train", "summary", "runs", "cancel", "torchrun-command"]), st.lists(words, max_size=8))
def test_any_command_line_is_one_line_and_status_2_or_success_without_a_traceback(command, argv):
    launches = []
    original = launcher.launch
    launcher.launch = lambda spec, runs_dir=None, client_token=None: launches.append(spec) or "fuzz-run"
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([command, *argv, "--runs-dir", "/nonexistent-shardlab-fuzz"])
            except SystemExit as exit:
                code = exit.code
    finally:
        launcher.launch = original
    assert code in (0, 1, 2), (argv, code)
    assert "Traceback" not in err.getvalue(), err.getvalue()
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) <= 1, err.getvalue()
    assert launches == [] or command == "train"  # only `train` may ask to launch (stubbed: nothing starts)


@pytest.mark.parametrize("argv", [
    ["train", "--seed", "1e30"], ["train", "--instrument", "no"], ["train", "--lr", "nan"],
    ["train", "--log-interval", "x"], ["train", "--steps", "99999999999999999999999"],
    ["torchrun-command", "--nnodes", "2"], ["summary"], ["runs", "--runs-dir"],
])
def test_known_bad_command_lines_are_one_line_errors(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit:
            code = exit.code
    assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
