"""FreezeSchedule on its own: pure schedule maths, no Trainer and no model."""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import pytest

from hf_transfer_cnn.schedule import FreezeSchedule
from hf_transfer_cnn.schedule.plan import optimizer_steps_per_epoch

NAMES = ["stem", "stage1", "stage2", "stage3", "stage4"]  # bottom to top, as a ResNet's


def plan(**kw) -> FreezeSchedule:
    return FreezeSchedule.from_triggers(**kw).resolve(NAMES)


def test_step_trigger_phases():
    p = plan(unfreeze_at_step=3, num_stages=1)
    assert p.phases == ((0, 0), (3, 1))
    assert (p.steps, p.stages, p.stage_names) == ((0, 3), (0, 1), tuple(NAMES))
    assert [p.phase_at(s) for s in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [p.trainable_stages_at(s) for s in range(6)] == [0, 0, 0, 1, 1, 1]
    assert p.trainable_stage_names_at(2) == [] and p.trainable_stage_names_at(3) == ["stage4"]
    assert p.first_unfreeze_step == 3


def test_unfreeze_at_step_zero_is_one_phase():
    p = plan(unfreeze_at_step=0, num_stages="all", lr_factor=0.5)
    assert (p.steps, p.stages) == ((0,), (5,))
    assert p.first_unfreeze_step == 0 and p.lr_factor_at(0) == 0.5
    assert p.trains_all_from_start and p.kept_for_later == frozenset() and p.varying_stages == frozenset()


def test_epoch_trigger_waits_for_the_epoch_length():
    p = plan(unfreeze_at_epoch=1.5, num_stages=2)
    assert p.phases == ((0, 0), (None, 2))
    assert (p.steps, p.stages) == ((0, sys.maxsize), (0, 2))  # epoch length unknown: never unfreezes yet
    assert p.trainable_stages_at(10**6) == 0 and p.first_unfreeze_step == sys.maxsize
    q = p.resolve(NAMES, steps_per_epoch=8)
    assert (q.steps, q.stages) == ((0, 12), (0, 2))
    assert [q.trainable_stages_at(s) for s in (11, 12)] == [0, 2]
    assert plan(unfreeze_at_epoch=0.3, num_stages=1).resolve(NAMES, 7).steps == (0, 3)  # ceil(2.1)
    assert plan(unfreeze_at_epoch=1, num_stages=1).resolve(NAMES, 8).steps == (0, 8)
    with pytest.raises(ValueError, match=re.escape("steps_per_epoch=0 must be a positive integer.")):
        p.resolve(NAMES, 0)
    assert plan(unfreeze_at_step=3, num_stages=1).resolve(NAMES, 0).steps == (0, 3)  # ignored without an epoch


def test_multi_phase_schedule():
    p = plan(schedule=[(0, 0), (2, 1), (4, "all")], stage_lr_decay=0.5)
    assert (p.steps, p.stages) == ((0, 2, 4), (0, 1, 5))
    assert [p.trainable_stages_at(s) for s in range(6)] == [0, 0, 1, 1, 5, 5]
    assert p.trainable_stage_names_at(3) == ["stage4"] and p.trainable_stage_names_at(4) == NAMES
    assert p.first_unfreeze_step == 2
    assert p.kept_for_later == set(NAMES) and p.varying_stages == set(NAMES) and p.trained_stages == set(NAMES)
    assert not p.trains_all_from_start
    # a schedule that does not start at step 0 gets a frozen first phase
    q = plan(schedule=[(5, 2)])
    assert q.phases == ((0, 0), (5, 2)) and (q.steps, q.stages) == ((0, 5), (0, 2))
    # a stage trained first and frozen again later varies, but is not kept for later
    r = plan(schedule=[(0, 1), (3, 2), (6, 1)])
    assert r.kept_for_later == {"stage3"} and r.varying_stages == {"stage3"}
    r = plan(schedule=[(0, 1), (3, 0)])
    assert r.kept_for_later == frozenset() and r.varying_stages == {"stage4"}
    fixed = plan(schedule=[(0, 2)])
    assert fixed.varying_stages == frozenset() and fixed.trained_stages == {"stage3", "stage4"}


def test_lr_factor_before_and_after_the_first_unfreeze():
    p = plan(unfreeze_at_step=3, num_stages=1, lr_factor=0.1)
    assert [p.lr_factor_at(s) for s in range(5)] == [1.0, 1.0, 1.0, 0.1, 0.1]
    assert p.scales_lr and not p.decays_stage_lr
    frozen = plan(schedule=[(0, 0)], lr_factor=0.1)  # no stage ever trains: the factor never applies
    assert frozen.first_unfreeze_step is None and frozen.lr_factor_at(100) == 1.0
    assert not plan(unfreeze_at_step=3, num_stages=1).scales_lr


def test_stage_lr_multipliers():
    p = plan(schedule=[(0, 0), (2, 2), (4, "all")], stage_lr_decay=0.5)
    assert p.stage_lr_multipliers_at(0) == []
    assert p.stage_lr_multipliers_at(2) == [("stage4", 0.5), ("stage3", 0.25)]
    assert p.stage_lr_multipliers_at(4) == [("stage4", 0.5), ("stage3", 0.25), ("stage2", 0.125),
                                            ("stage1", 0.0625), ("stem", 0.03125)]
    assert plan(unfreeze_at_step=0, num_stages=2).stage_lr_multipliers_at(5) == []  # no decay
    assert plan(unfreeze_at_step=0, num_stages=2, stage_lr_decay=1.0).decays_stage_lr is False


def test_phases_until():
    p = plan(schedule=[(0, 0), (2, 1), (4, "all")])
    assert p.phases_until(0) == [(0, 0)]
    assert p.phases_until(2) == [(0, 0)]
    assert p.phases_until(3) == [(0, 0), (2, 1)]
    assert p.phases_until(100) == [(0, 0), (2, 1), (4, 5)]
    assert plan(unfreeze_at_step=0, num_stages=1).phases_until(0) == [(0, 1)]
    assert plan(schedule=[(0, 1), (3, 1), (6, 2)]).phases_until(10) == [(0, 1), (6, 2)]  # same count: one phase


def test_unreachable_steps():
    p = plan(schedule=[(0, 0), (2, 1), (4, "all")])
    assert p.unreachable_steps(3) == [4]
    assert p.unreachable_steps(2) == [2, 4]
    assert p.unreachable_steps(10) == [] and p.unreachable_steps(-1) == [] and p.unreachable_steps(0) == []


def test_record_round_trip():
    p = plan(schedule=[(0, 0), (2, 1), (4, "all")], lr_factor=0.5, stage_lr_decay=0.5)
    record = p.record()
    assert record == {"phases": [[0, 0], [2, 1], [4, 5]], "lr_factor": 0.5, "stage_lr_decay": 0.5,
                      "stage_names": NAMES}
    back = FreezeSchedule.from_record(json.loads(json.dumps(record, indent=2)))
    assert back.record() == record
    assert (back.steps, back.stages, back.stage_names) == (p.steps, p.stages, p.stage_names)
    assert [back.lr_factor_at(s) for s in (1, 2)] == [1.0, 0.5]
    assert plan(unfreeze_at_step=3, num_stages=2).record() == {
        "phases": [[0, 0], [3, 2]], "lr_factor": 1.0, "stage_lr_decay": None, "stage_names": NAMES}
    epochs = plan(unfreeze_at_epoch=1, num_stages=1).resolve(NAMES, 4)
    assert FreezeSchedule.from_record(epochs.record()).steps == (0, 4)  # the resolved step, as the weights followed


def test_unresolved_schedule():
    p = FreezeSchedule.from_triggers(unfreeze_at_step=3, num_stages="all")
    assert not p.is_resolved and p.steps == () and p.stages == ()
    assert p.record() == {"phases": [], "lr_factor": 1.0, "stage_lr_decay": None, "stage_names": []}
    assert p.kept_for_later == frozenset() and p.varying_stages == frozenset() and not p.trains_all_from_start
    with pytest.raises(RuntimeError, match=r"resolve\(stage_names\) first"):
        p.trainable_stages_at(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.lr_factor = 0.5
    with pytest.raises(ValueError, match="only 5 stages"):
        FreezeSchedule.from_triggers(unfreeze_at_step=3, num_stages=7).resolve(NAMES)


@pytest.mark.parametrize("kw, message", [
    (dict(unfreeze_at_step=3, unfreeze_at_epoch=1, num_stages=1),
     "Give exactly one of unfreeze_at_step, unfreeze_at_epoch or schedule (got unfreeze_at_step=3, "
     "unfreeze_at_epoch=1, schedule=None)."),
    (dict(num_stages=1),
     "Give exactly one of unfreeze_at_step, unfreeze_at_epoch or schedule (got unfreeze_at_step=None, "
     "unfreeze_at_epoch=None, schedule=None)."),
    (dict(unfreeze_at_step=3),
     "num_stages is required with unfreeze_at_step/unfreeze_at_epoch (an int or 'all')."),
    (dict(schedule=[(0, 1)], num_stages=1),
     "num_stages goes inside schedule=[(step, num_stages), ...]; don't pass both."),
    (dict(unfreeze_at_step=3, num_stages=1, lr_factor=0), "lr_factor=0 must be a positive number (e.g. 0.1)."),
    (dict(unfreeze_at_step=3, num_stages=1, lr_factor="0.1"),
     "lr_factor='0.1' must be a positive number (e.g. 0.1)."),
    (dict(unfreeze_at_step=3, num_stages=1, stage_lr_decay=1.5), "stage_lr_decay=1.5 must be in (0, 1]."),
    (dict(unfreeze_at_step=3, num_stages=1, stage_lr_decay=0), "stage_lr_decay=0 must be in (0, 1]."),
    (dict(unfreeze_at_epoch=-1, num_stages=1), "unfreeze_at_epoch=-1 must be >= 0."),
    (dict(unfreeze_at_step=3, num_stages=1, lr_factor=float("inf")),
     "lr_factor=inf must be a positive number (e.g. 0.1)."),
    (dict(unfreeze_at_step=3, num_stages=1, lr_factor=float("nan")),
     "lr_factor=nan must be a positive number (e.g. 0.1)."),
    (dict(unfreeze_at_step=3, num_stages=1, lr_factor=True), "lr_factor=True must be a positive number (e.g. 0.1)."),
    (dict(unfreeze_at_step=3, num_stages=1, stage_lr_decay=float("nan")), "stage_lr_decay=nan must be in (0, 1]."),
    (dict(unfreeze_at_step=3, num_stages=1, stage_lr_decay="0.5"), "stage_lr_decay='0.5' must be in (0, 1]."),
    (dict(unfreeze_at_epoch=float("nan"), num_stages=1),
     "unfreeze_at_epoch=nan must be a finite number of epochs (e.g. 1 or 0.5)."),
    (dict(unfreeze_at_epoch=float("inf"), num_stages=1),
     "unfreeze_at_epoch=inf must be a finite number of epochs (e.g. 1 or 0.5)."),
    (dict(unfreeze_at_step=-2, num_stages=1), "Schedule step -2 must be a non-negative integer optimizer step."),
    (dict(unfreeze_at_step=2.5, num_stages=1), "Schedule step 2.5 must be a non-negative integer optimizer step."),
    (dict(schedule=[(0, 0), (True, 1)]), "Schedule step True must be a non-negative integer optimizer step."),
    (dict(schedule=[(0, 0), (5, 1), (3, 2)]), "Schedule steps must be strictly increasing, got [0, 5, 3]."),
    (dict(schedule=[(0, 0), (4, 1), (4, 2)]), "Schedule steps must be strictly increasing, got [0, 4, 4]."),
])
def test_validation_errors(kw, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FreezeSchedule.from_triggers(**kw)


def test_optimizer_steps_per_epoch():
    assert optimizer_steps_per_epoch(8, 1) == 8
    assert optimizer_steps_per_epoch(8, 4) == 2
    assert optimizer_steps_per_epoch(10, 4) == 3  # the last, partial window still steps
    assert optimizer_steps_per_epoch(0, 4) == 1
    assert optimizer_steps_per_epoch(5, 0) == 5
