"""L2M-KD: ROUGE-L ranking with CE tie-break, subsets with the remainder to the easiest, Eq. 6 and Eq. 7 ladders."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus.curate.schedules import l2m
from syllabus.curate.schedules.config import ScheduleError
from syllabus.curate.schedules.l2m import L2MConfig
from test_schedule_support import ids_of, make_frame, summed


def test_ladders_of_eq_6_and_7_by_hand():
    epochs = l2m.build(make_frame(10), L2MConfig())
    assert [len(ids_of(e)) for e in epochs] == [3, 3, 6, 6, 8, 8, 10, 10]  # subsets 3, 3, 2, 2, cumulative
    assert [e.plan.stage for e in epochs] == [0, 0, 1, 1, 2, 2, 3, 3]
    # alpha_i = 0.1 (i-1)/3 and beta_i = 0.7 - (0.7 - 1.0)(i-1)/3, i = 1..4
    assert [e.plan.loss_params["skew"] for e in epochs[::2]] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert [e.plan.kd_weight for e in epochs[::2]] == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert all(e.plan.loss == "skl" and e.plan.temperature == 1.0 for e in epochs)
    assert [e.plan.restart_optimizer for e in epochs] == [False, False, True, False, True, False, True, False]


def test_appendix_split_of_11500_rows():
    assert [len(ids_of(e)) for e in l2m.build(make_frame(11_501), L2MConfig(epochs_per_stage=1))] == [
        2876, 5751, 8626, 11_501]  # 2,875 each, the one extra row in the easiest subset


def test_ranks_by_rouge_then_student_ce():
    frame = pl.DataFrame({"sample_id": list("abcd"), "rouge_l": [0.2, 0.9, 0.9, 0.1],
                          "student_ce": [1.0, 2.0, 1.0, 1.0], "response_tokens": [5, 5, 5, 5]})
    assert [p.to_list() for p in l2m.subsets(frame, L2MConfig())] == [["c"], ["b"], ["a"], ["d"]]
    assert [p.to_list() for p in l2m.subsets(frame, L2MConfig(tie_column="none"))] == [["b"], ["c"], ["a"], ["d"]]


def test_the_tie_break_ce_is_summed_over_the_response_by_default():
    """3.2.1 breaks ROUGE-L ties by "the cross-entropy loss", which Eq. 1 defines as a sum over the tokens."""
    frame = pl.DataFrame({"sample_id": list("abcd"), "rouge_l": [0.9, 0.9, 0.9, 0.1],
                          "student_ce": [1.0, 2.0, 3.0, 0.5], "response_tokens": [30, 10, 1, 1]})
    assert [p.to_list() for p in l2m.subsets(frame, L2MConfig())] == [["c"], ["b"], ["a"], ["d"]]  # 3, 20, 30
    mean = L2MConfig(ce_reduction="mean")
    assert [p.to_list() for p in l2m.subsets(frame, mean)] == [["a"], ["b"], ["c"], ["d"]]
    assert L2MConfig().columns() == ["rouge_l", "student_ce", "response_tokens"]
    assert L2MConfig(tie_column="output_ce").columns() == ["rouge_l", "output_ce", "output_tokens"]
    assert mean.columns() == ["rouge_l", "student_ce"] and L2MConfig(tie_column="none").columns() == ["rouge_l"]
    with pytest.raises(ScheduleError, match="parameter ce_reduction must be one of sum, mean"):
        L2MConfig(ce_reduction="max")


def test_most_to_least_and_reverse_are_separate_ablations():
    frame = make_frame(12)
    m2l = l2m.build(frame, L2MConfig(loss_order="m2l", epochs_per_stage=1))
    assert [e.plan.loss_params["skew"] for e in m2l] == pytest.approx([0.1, 0.2 / 3, 0.1 / 3, 0.0])
    assert [len(ids_of(e)) for e in m2l] == [3, 6, 9, 12]  # data order unchanged
    parts = [p.to_list() for p in l2m.subsets(frame, L2MConfig())]
    reverse = l2m.build(frame, L2MConfig(epochs_per_stage=1), reverse=True)
    assert ids_of(reverse[0]) == parts[3] and ids_of(reverse[1]) == parts[3] + parts[2]
    assert [e.plan.loss_params["skew"] for e in reverse] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])


def test_loss_override_keeps_the_ladder_only_where_the_loss_reads_it():
    frame = make_frame(8)
    srkl = l2m.build(frame, L2MConfig(loss="srkl", epochs_per_stage=1))
    assert [e.plan.loss_params for e in srkl][-1] == {"skew": pytest.approx(0.1)}
    kld = l2m.build(frame, L2MConfig(loss="kld", epochs_per_stage=1))
    assert all(e.plan.loss == "kld" and e.plan.loss_params == {} for e in kld)
    assert [e.plan.kd_weight for e in kld] == pytest.approx([0.7, 0.8, 0.9, 1.0])
    with pytest.raises(ScheduleError, match="loss_params.skew: L2M-KD sets the skew per stage"):
        L2MConfig(loss_params={"skew": 0.2})
    with pytest.raises(ScheduleError, match="parameter skew_last must be in"):
        L2MConfig(skew_last=1.5)
    with pytest.raises(ScheduleError, match="parameter stages: 4 stages need at least 4 usable rows"):
        l2m.build(make_frame(3), L2MConfig())


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), stages=st.integers(1, 6), epochs_per_stage=st.integers(1, 3),
       seed=st.integers(0, 10_000), ties=st.booleans(), alpha=st.sampled_from([0.1, 0.15, 0.5]),
       reduction=st.sampled_from(["sum", "mean"]))
def test_invariants_over_random_tables(n, stages, epochs_per_stage, seed, ties, alpha, reduction):
    config = L2MConfig(stages=stages, epochs_per_stage=epochs_per_stage, skew_last=alpha, ce_reduction=reduction)
    frame = make_frame(n, seed, ties).select("sample_id", *config.columns())
    if n < stages:
        with pytest.raises(ScheduleError):
            l2m.build(frame, config)
        return
    epochs = l2m.build(frame, config)
    ce = summed(frame, "student_ce") if reduction == "sum" else frame["student_ce"].to_list()
    order = [s for s, *_ in sorted(zip(frame["sample_id"], frame["rouge_l"], ce), key=lambda r: (-r[1], r[2], r[0]))]
    assert len(epochs) == stages * epochs_per_stage
    sizes = [len(ids_of(epochs[i * epochs_per_stage])) for i in range(stages)]
    subset_sizes = [b - a for a, b in zip([0, *sizes], sizes)]
    assert sizes[-1] == n and max(subset_sizes) - min(subset_sizes) <= 1
    assert subset_sizes == sorted(subset_sizes, reverse=True)  # remainder to the easiest subsets first
    for i, e in enumerate(epochs):
        stage = i // epochs_per_stage
        ramp = stage / (stages - 1) if stages > 1 else 0.0
        assert ids_of(e) == order[: sizes[stage]]
        assert e.plan.loss_params["skew"] == pytest.approx(alpha * ramp)
        assert e.plan.kd_weight == pytest.approx(0.7 + 0.3 * ramp)
