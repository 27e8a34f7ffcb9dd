"""SRD: reciprocal rank fusion, top-lambda selection, baby-step stages, temperature and SFT ladders, restarts."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus.curate.schedules import srd
from syllabus.curate.schedules.config import ScheduleError
from syllabus.curate.schedules.srd import SRDConfig
from test_schedule_support import ids_of, make_frame, summed


def test_rrf_scores_by_hand():
    frame = pl.DataFrame({"sample_id": ["a", "b", "c"], "rouge_l": [0.9, 0.5, 0.1], "output_ce": [3.0, 1.0, 2.0]})
    scored = srd.rrf_scores(frame, "output_ce")
    # r_rouge: a 1, b 2, c 3; r_ce: b 1, c 2, a 3
    assert scored["sample_id"].to_list() == ["b", "a", "c"]
    assert scored["r_rouge"].to_list() == [2, 1, 3] and scored["r_ce"].to_list() == [1, 3, 2]
    assert scored["f"].to_list() == pytest.approx([1 / 62 + 1 / 61, 1 / 61 + 1 / 63, 1 / 63 + 1 / 62], abs=0)


def test_rrf_ties_ordinal_and_min_by_hand():
    frame = pl.DataFrame({"sample_id": list("abcd"), "rouge_l": [0.5, 0.5, 0.2, 0.9], "student_ce": [1.0, 2, 3, 4]})
    ordinal = srd.rrf_scores(frame, "student_ce", ties="ordinal").sort("sample_id")
    assert ordinal["r_rouge"].to_list() == [2, 3, 4, 1]  # the tie a/b in sample_id order
    shared = srd.rrf_scores(frame, "student_ce", ties="min").sort("sample_id")
    assert shared["r_rouge"].to_list() == [2, 2, 4, 1]
    assert shared["f"][1] == 1 / 62 + 1 / 62
    no_k = srd.rrf_scores(frame, "student_ce", k=0)
    assert no_k["sample_id"].to_list() == ["a", "d", "b", "c"]  # f = 1/2 + 1/1, 1/1 + 1/4, 1/3 + 1/2, 1/4 + 1/3


def test_keep_top_lambda_and_cut_into_near_equal_subsets_by_hand():
    frame = pl.DataFrame({
        "sample_id": [f"s{i}" for i in range(10)],
        "rouge_l": [1 - i / 10 for i in range(10)],  # s0 easiest by both metrics ... s9 hardest
        "output_ce": [float(i) for i in range(10)],
        "output_tokens": [8] * 10,
    })
    parts = srd.subsets(frame, SRDConfig(keep_share=0.75, stages=3))
    assert [p.to_list() for p in parts] == [["s0", "s1", "s2"], ["s3", "s4"], ["s5", "s6"]]  # floor(7.5) = 7 kept


def test_stages_ladders_and_restarts_by_hand():
    frame = make_frame(40)
    epochs = srd.build(frame, SRDConfig(stages=3, epochs_per_stage=2, keep_share=0.75))
    assert [len(ids_of(e)) for e in epochs] == [10, 10, 20, 20, 30, 30]
    assert [e.plan.stage for e in epochs] == [0, 0, 1, 1, 2, 2]
    assert [e.plan.temperature for e in epochs] == pytest.approx([1.0, 1.0, 1.5, 1.5, 2.0, 2.0])
    assert [e.plan.kd_weight for e in epochs] == pytest.approx([0.7, 0.7, 0.8, 0.8, 0.9, 0.9])  # SFT 0.3 -> 0.1
    assert [e.plan.restart_optimizer for e in epochs] == [False, False, True, False, True, False]
    assert ids_of(epochs[2])[:10] == ids_of(epochs[0])  # cumulative: stage 2 = subset 1 + subset 2
    no_restart = srd.build(frame, SRDConfig(stages=3, epochs_per_stage=2, restart_optimizer=False))
    assert not any(e.plan.restart_optimizer for e in no_restart)


def test_defaults_train_sixty_percent_of_a_twenty_epoch_baseline():
    """B.3.1: 8 epochs per stage over 3 stages is 60% of the baseline's 20 epochs x N samples."""
    epochs = srd.build(make_frame(400), SRDConfig())
    assert len(epochs) == 24
    assert sum(len(e.sample_ids) for e in epochs) == 0.6 * 20 * 400


def test_ce_column_and_ranges_are_checked():
    assert SRDConfig().columns() == ["rouge_l", "output_ce", "output_tokens"]
    assert SRDConfig(ce_column="student_ce").columns() == ["rouge_l", "student_ce", "response_tokens"]
    assert SRDConfig(ce_reduction="mean").columns() == ["rouge_l", "output_ce"]
    with pytest.raises(ScheduleError, match="parameter ce_column"):
        SRDConfig(ce_column="dds")
    with pytest.raises(ScheduleError, match="parameter ce_reduction must be one of sum, mean, got 'token'"):
        SRDConfig(ce_reduction="token")
    with pytest.raises(ScheduleError, match="parameter keep_share must be in"):
        SRDConfig(keep_share=1.5)
    with pytest.raises(ScheduleError, match="parameter keep_share: keep_share=0.5 of 4 usable rows leaves 2 rows for 3 stages"):
        srd.subsets(make_frame(4), SRDConfig(keep_share=0.5))


def test_reverse_introduces_the_hardest_subset_first():
    frame = make_frame(60)
    config = SRDConfig(stages=3, epochs_per_stage=1)
    parts = [p.to_list() for p in srd.subsets(frame, config)]
    reverse = srd.build(frame, config, reverse=True)
    assert [ids_of(e) for e in reverse] == [parts[2], parts[2] + parts[1], parts[2] + parts[1] + parts[0]]
    assert [e.plan.temperature for e in reverse] == pytest.approx([1.0, 1.5, 2.0])  # ladders keep their direction


def reference_order(rows: list[tuple[str, float, float]], k: int) -> list[str]:
    """RRF computed independently: ordinal ranks from 1 with ties in sample_id order, f descending."""
    by_rouge = sorted(rows, key=lambda r: (-r[1], r[0]))
    by_ce = sorted(rows, key=lambda r: (r[2], r[0]))
    r_rouge = {r[0]: i + 1 for i, r in enumerate(by_rouge)}
    r_ce = {r[0]: i + 1 for i, r in enumerate(by_ce)}
    f = {s: 1.0 / (k + r_rouge[s]) + 1.0 / (k + r_ce[s]) for s, _, _ in rows}
    return sorted(f, key=lambda s: (-f[s], s))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), keep=st.sampled_from([0.3, 0.5, 0.75, 0.9, 1.0]), stages=st.integers(1, 6),
       epochs_per_stage=st.integers(1, 3), seed=st.integers(0, 10_000), ties=st.booleans(),
       ce_column=st.sampled_from(srd.CE_COLUMNS), reduction=st.sampled_from(["sum", "mean"]))
def test_invariants_over_random_tables(n, keep, stages, epochs_per_stage, seed, ties, ce_column, reduction):
    config = SRDConfig(stages=stages, epochs_per_stage=epochs_per_stage, keep_share=keep, ce_column=ce_column,
                       ce_reduction=reduction)
    frame = make_frame(n, seed, ties).select("sample_id", *config.columns())
    kept = math.floor(keep * n + 1e-6)
    if kept < stages:
        with pytest.raises(ScheduleError, match="parameter keep_share"):
            srd.build(frame, config)
        return
    epochs = srd.build(frame, config)
    ce = summed(frame, ce_column) if reduction == "sum" else frame[ce_column].to_list()
    order = reference_order(list(zip(frame["sample_id"], frame["rouge_l"], ce)), 60)
    final = ids_of(epochs[-1])
    assert final == order[:kept]  # exactly the top floor(lambda N) by fused score, easiest first
    sizes = [len(ids_of(epochs[i * epochs_per_stage])) for i in range(stages)]
    subset_sizes = [b - a for a, b in zip([0, *sizes], sizes)]
    assert max(subset_sizes) - min(subset_sizes) <= 1 and sum(subset_sizes) == kept
    assert subset_sizes == sorted(subset_sizes, reverse=True)  # the remainder goes to the easiest subsets
    for i, e in enumerate(epochs):
        stage = i // epochs_per_stage
        assert ids_of(e) == order[: sizes[stage]]  # cumulative stages
        assert e.plan.stage == stage
        ramp = stage / (stages - 1) if stages > 1 else 0.0
        assert e.plan.temperature == pytest.approx(1.0 + ramp)
        assert e.plan.kd_weight == pytest.approx(1 - (0.3 - 0.2 * ramp))
        assert e.plan.restart_optimizer == (stage > 0 and i % epochs_per_stage == 0)


def test_ce_is_summed_over_the_output_by_default():
    """Eq. 4 (appendix A): L_ce = -sum_i log q(y_i|x, y_<i), over the output's tokens. A sum ranks long outputs as
    harder: here it reverses the CE ranking, and with it the fused one."""
    frame = pl.DataFrame({"sample_id": list("abcd"), "rouge_l": [0.5] * 4, "output_ce": [1.0, 2.0, 3.0, 4.0],
                          "output_tokens": [40, 10, 5, 2], "student_ce": [1.0, 1.5, 2.0, 2.5],
                          "response_tokens": [100, 1, 1, 1]})
    one_stage = dict(stages=1, keep_share=1.0, rank_ties="min")  # rouge_l ties: the CE rank decides
    assert srd.subsets(frame, SRDConfig(**one_stage))[0].to_list() == ["d", "c", "b", "a"]  # sums 8, 15, 20, 40
    assert srd.subsets(frame, SRDConfig(**one_stage, ce_reduction="mean"))[0].to_list() == ["a", "b", "c", "d"]
    by_truth = SRDConfig(**one_stage, ce_column="student_ce")  # the ground truth's CE, over response_tokens
    assert srd.subsets(frame, by_truth)[0].to_list() == ["b", "c", "d", "a"]  # sums 100, 1.5, 2, 2.5
    half = SRDConfig(stages=1, keep_share=0.5, rank_ties="min")
    assert srd.subsets(frame, half)[0].to_list() == ["d", "c"]
    assert srd.subsets(frame, dataclasses.replace(half, ce_reduction="mean"))[0].to_list() == ["a", "b"]


def test_alpha_0_follows_section_4_and_b33_and_the_deviation_is_documented():
    """Algorithm 1 initialises alpha_0 = 1; section 4, B.3.3 and Table 5 use alpha_0 = 0.3 (kd_weight 0.7)."""
    assert SRDConfig().kd_weight_first == pytest.approx(1 - 0.3)
    methods = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    deviations = methods.split("## Deviations from the papers")[1].split("\n## ")[0]
    assert "α_0 = 1" in deviations and "B.3.3" in deviations
