"""ModelStateMeter: the model-state walk is skipped only while nothing can have changed, and says when it walked."""

from __future__ import annotations

import torch

from engine.memory import ModelStateMeter, SteadyFigure, model_state_bytes


def test_the_meter_walks_until_stable_then_rechecks_and_rearms_on_a_change():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    meter = ModelStateMeter(model, optimizer)
    walked = []
    for step in range(1, 30):
        state, at = meter.measure("step", step)
        walked.append(at)
        assert state == model_state_bytes(model, optimizer)  # never a stale figure while nothing changed
        if step == 1:
            model(torch.randn(2, 4)).sum().backward()  # gradients appear
            optimizer.step()  # optimizer state appears
    stable = SteadyFigure.STABLE_WALKS
    # Walked at 1 (empty), 2 (grads + Adam state: a change), then `stable` repeats, then every RECHECK_STEPS.
    assert walked[: 2 + stable] == list(range(1, 3 + stable))
    assert walked[2 + stable] == 2 + stable, "a stable phase reuses its last walk and says which step that was"
    assert sorted(set(walked))[-1] - sorted(set(walked))[-2] == SteadyFigure.RECHECK_STEPS

    model.extra = torch.nn.Parameter(torch.zeros(1000))  # storage changes: the next recheck must see it
    state, at = meter.measure("step", 100)
    assert at == 100 and state["params"] == model_state_bytes(model, optimizer)["params"]
    assert meter.measure("step", 101)[1] == 101, "a change re-arms walking every step"


def test_a_steady_figure_is_due_until_it_repeats_then_every_recheck_and_again_after_a_change():
    figure, due_at = SteadyFigure(), []
    for step in range(1, 40):
        if figure.due(step):
            due_at.append(step)
            figure.measured(100 if step < 30 else 200, step)  # the figure changes from step 30 on
    stable = SteadyFigure.STABLE_WALKS
    assert due_at[: stable + 1] == list(range(1, stable + 2)), "measured every time until it repeated"
    assert due_at[stable + 1] - due_at[stable] == SteadyFigure.RECHECK_STEPS
    changed = next(s for s in due_at if s >= 30)
    assert due_at[due_at.index(changed):][: stable + 1] == list(range(changed, changed + stable + 1)), \
        "a recheck that differs re-arms measuring every time"
    assert figure.latest == (200, due_at[-1])
