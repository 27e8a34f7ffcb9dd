"""SpectrumKD: zones, warm-up, sliding window (Algorithm 1) and temperature, by hand and over random tables."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus.curate.schedules import spectrum
from syllabus.curate.schedules.config import ScheduleError
from syllabus.curate.schedules.spectrum import SpectrumConfig
from test_schedule_support import ids_of, make_frame, summed


def test_zone_bounds_by_hand():
    assert spectrum.zone_bounds(100, 0.1, 0.1) == (10, 80, 90)
    assert spectrum.zone_bounds(10, 0.2, 0.1) == (2, 7, 9)
    # (1 - 0.15 - 0.05) * 20 is 15.999999999999998 in floats; the paper's i <= 0.8 N means 16.
    assert spectrum.zone_bounds(20, 0.15, 0.05) == (3, 16, 19)
    assert spectrum.zone_bounds(7, 0.0, 0.0) == (0, 7, 7)
    # floor(99.7) = 99, floor(897.3) = 897: M = 897 - 99 = 798 (not floor(797.6) = 797), so Late is as long as Early
    assert spectrum.zone_bounds(997, 0.1, 0.1) == (99, 798, 897)


def test_parameters_are_checked_by_name():
    with pytest.raises(ScheduleError, match=r"2\*early_share \+ excluded_share <= 1"):
        SpectrumConfig(early_share=0.5, excluded_share=0.1)
    SpectrumConfig(early_share=0.45, excluded_share=0.1)  # 2 la + lb = 1 is allowed
    with pytest.raises(ScheduleError, match="parameter excluded_share must be in"):
        SpectrumConfig(excluded_share=-0.1)
    with pytest.raises(ScheduleError, match="parameter warmup_epochs must be < epochs"):
        SpectrumConfig(epochs=5, warmup_epochs=5)
    with pytest.raises(ScheduleError, match="parameter step must be one of"):
        SpectrumConfig(step="fast")
    with pytest.raises(ScheduleError, match="parameter temperature_first must be > 0"):
        SpectrumConfig(temperature_first=0)


def staircase() -> pl.DataFrame:
    """20 rows s00..s19 with difficulty 0 (x5), 1 (x14), 6: with la = 0.25, lb = 0, M = 15, the window can start
    at 0..5 and its summed difficulty td is 15, 16, 17, 18, 19, 25 (steps 1, 1, 1, 1, 6). One token per response,
    so the summed CE is the mean."""
    difficulty = [0.0] * 5 + [1.0] * 14 + [6.0]
    return pl.DataFrame({"sample_id": [f"s{i:02d}" for i in range(20)], "student_ce": difficulty,
                         "response_tokens": [1] * 20})


@pytest.mark.parametrize("step,starts", [
    # Delta_avg = (25 - 15) / 2 = 5. adaptive: targets td 20, 25 -> nearest starts 4 (td 19), 5 (td 25).
    ("adaptive", [0, 0, 4, 5]),
    # Algorithm 1: rises 1, 2, 3, 4 (<= 5, go on), then 10 > 5 -> start 5 at once; then nowhere left to go.
    ("greedy", [0, 0, 5, 5]),
    # linear: 5 positions in 2 equal steps, 2.5 rounded half up -> 3.
    ("linear", [0, 0, 3, 5]),
])
def test_window_positions_by_hand(step, starts):
    config = SpectrumConfig(epochs=4, warmup_epochs=1, early_share=0.25, excluded_share=0.0, step=step)
    epochs = spectrum.build(staircase(), config)
    assert [ids_of(e) for e in epochs] == [[f"s{i:02d}" for i in range(s, s + 15)] for s in starts]


def test_adaptive_rise_is_more_even_than_the_literal_loop_by_hand():
    frame = staircase()
    td = lambda e: sum(frame.filter(pl.col("sample_id").is_in(ids_of(e)))["student_ce"])  # noqa: E731
    rises = lambda es: [td(b) - td(a) for a, b in zip(es[1:], es[2:])]  # noqa: E731  (after warm-up)
    adaptive = spectrum.build(frame, SpectrumConfig(epochs=4, warmup_epochs=1, early_share=0.25, excluded_share=0.0))
    greedy = spectrum.build(frame, SpectrumConfig(epochs=4, warmup_epochs=1, early_share=0.25, excluded_share=0.0, step="greedy"))
    assert rises(adaptive) == [4.0, 6.0] and rises(greedy) == [10.0, 0.0]


def test_temperature_is_linear_over_all_epochs_and_kd_weight_is_one_minus_sft():
    epochs = spectrum.build(make_frame(50), SpectrumConfig(epochs=5, warmup_epochs=1))
    assert [e.plan.temperature for e in epochs] == pytest.approx([1.0, 1.25, 1.5, 1.75, 2.0])
    assert all(e.plan.kd_weight == pytest.approx(0.7) and e.plan.loss == "kld" and e.plan.loss_params == {} for e in epochs)
    assert all(e.plan.stage == 0 and not e.plan.restart_optimizer and not e.plan.rescore for e in epochs)


def test_rouge_l_spectrum_ranks_high_rouge_first():
    frame = pl.DataFrame({"sample_id": list("abcde"), "rouge_l": [0.1, 0.9, 0.5, 0.7, 0.3]})
    epochs = spectrum.build(frame, SpectrumConfig(epochs=2, warmup_epochs=0, early_share=0.2, excluded_share=0.2, difficulty="rouge_l"))
    # easiest first: b .9, d .7, c .5, e .3, a .1; M = 3, curated end 4, so a is Excluded
    assert [ids_of(e) for e in epochs] == [["b", "d", "c"], ["d", "c", "e"]]


def test_reverse_warms_up_on_the_hardest_window_and_slides_left():
    frame = make_frame(200, 1)
    config = SpectrumConfig(epochs=8, warmup_epochs=2)
    forward = [ids_of(e) for e in spectrum.build(frame, config)]
    reverse = [ids_of(e) for e in spectrum.build(frame, config, reverse=True)]
    distinct_forward = forward[2:]  # first window, then the slides
    assert reverse[:2] == [forward[-1]] * 2 and reverse[2:] == distinct_forward[::-1]
    assert [e.plan.temperature for e in spectrum.build(frame, config, reverse=True)] == pytest.approx(
        [1 + j / 7 for j in range(8)])  # the temperature still rises


def test_too_few_rows_for_a_window():
    with pytest.raises(ScheduleError, match="empty window"):  # floor(0.9) - floor(0.45) = 0
        spectrum.build(make_frame(3), SpectrumConfig(early_share=0.15, excluded_share=0.7))


def spectrum_cases():
    @st.composite
    def case(draw):
        la = draw(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.45]))
        lb = draw(st.sampled_from([0.0, 0.1, 0.15, 0.3]).filter(lambda b: 2 * la + b <= 1))
        epochs = draw(st.integers(1, 12))
        return dict(n=draw(st.integers(1, 300)), la=la, lb=lb, epochs=epochs,
                    warmup=draw(st.integers(0, epochs - 1)), seed=draw(st.integers(0, 10_000)),
                    step=draw(st.sampled_from(spectrum.STEPS)), ties=draw(st.booleans()),
                    reduction=draw(st.sampled_from(["sum", "mean"])))
    return case()


@settings(max_examples=60, deadline=None)
@given(spectrum_cases())
def test_invariants_over_random_tables(case):
    n, la, lb, epochs, k = case["n"], case["la"], case["lb"], case["epochs"], case["warmup"]
    early, end = math.floor(la * n + 1e-6), math.floor((1 - lb) * n + 1e-6)
    m = end - early
    if m < 1:
        return
    frame = make_frame(n, case["seed"], case["ties"]).select("sample_id", "student_ce", "response_tokens")
    result = spectrum.build(frame, SpectrumConfig(epochs=epochs, warmup_epochs=k, early_share=la, excluded_share=lb,
                                                  step=case["step"], ce_reduction=case["reduction"]))
    difficulty = summed(frame, "student_ce") if case["reduction"] == "sum" else frame["student_ce"].to_list()
    ordered = [s for _, s in sorted(zip(difficulty, frame["sample_id"]))]
    position = {s: i for i, s in enumerate(ordered)}
    starts = [position[ids_of(e)[0]] for e in result]
    assert len(result) == epochs
    for e, s in zip(result, starts):
        assert ids_of(e) == ordered[s : s + m]  # a contiguous window of constant size M
        assert s + m <= end  # the Excluded zone s_{(1-lb)N+1..N} never appears
    assert all(s == 0 for s in starts[: k + 1])  # warm-up epochs (and the first window) equal
    assert starts == sorted(starts)  # the window only moves right
    if epochs > k + 1:
        assert starts[-1] + m == end  # the last window ends at (1 - lb) N
    expected = [1.0 + (j / (epochs - 1) if epochs > 1 else 0.0) for j in range(epochs)]
    assert [e.plan.temperature for e in result] == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 400), slides=st.integers(1, 15), seed=st.integers(0, 10_000), ties=st.booleans())
def test_adaptive_rise_is_as_even_as_the_data_allows(n, slides, seed, ties):
    """Each post-warm-up rise of td is within one position's td change of Delta_avg (Algorithm 1's aim)."""
    frame = make_frame(n, seed, ties).select("sample_id", "student_ce", "response_tokens")
    result = spectrum.build(frame, SpectrumConfig(epochs=slides + 1, warmup_epochs=0))
    ce = dict(zip(frame["sample_id"], summed(frame, "student_ce")))  # the default: CE summed over the response
    td = [math.fsum(ce[s] for s in ids_of(e)) for e in result]
    rises = np.diff(td)
    avg = (td[-1] - td[0]) / slides
    d = np.sort(np.array(summed(frame, "student_ce")))
    end = math.floor(0.9 * n + 1e-6)
    m = end - math.floor(0.1 * n + 1e-6)
    one_step = max((d[m + t] - d[t] for t in range(end - m)), default=0.0)  # largest td change of one slide
    assert np.all(np.abs(rises - avg) <= one_step + 1e-9)


def test_ce_is_summed_over_the_response_by_default():
    """3.2: L_i = -log q(y_i|x_i), the response's log-likelihood: a sum over its tokens, not the table's mean."""
    frame = pl.DataFrame({"sample_id": list("abc"), "student_ce": [1.0, 2.0, 3.0], "response_tokens": [10, 2, 1]})
    whole = dict(epochs=1, warmup_epochs=0, early_share=0.0, excluded_share=0.0)
    assert ids_of(spectrum.build(frame, SpectrumConfig(**whole))[0]) == ["c", "b", "a"]  # sums 3, 4, 10
    assert ids_of(spectrum.build(frame, SpectrumConfig(**whole, ce_reduction="mean"))[0]) == ["a", "b", "c"]
    assert SpectrumConfig().columns() == ["student_ce", "response_tokens"]
    assert SpectrumConfig(difficulty="output_ce").columns() == ["output_ce", "output_tokens"]
    assert SpectrumConfig(ce_reduction="mean").columns() == ["student_ce"]
    assert SpectrumConfig(difficulty="rouge_l").columns() == ["rouge_l"]  # not a CE: nothing to sum
    assert SpectrumConfig(difficulty="dds").columns() == ["dds"]  # a ratio of CEs over the same tokens
    with pytest.raises(ScheduleError, match="parameter ce_reduction must be one of sum, mean, got 'median'"):
        SpectrumConfig(ce_reduction="median")


def zone_bounds_exact(n: int, early_share: str, excluded_share: str) -> tuple[int, int, int]:
    """The zone ends of docs/methods.md (s_1..e1 Early, ..M Continuous, ..E Late), in exact arithmetic: the paper's
    (3.2) e1 = floor(la N) and E = floor((1 - lb) N), and M = E - e1, which is the paper's Continuous bound
    floor((1 - la - lb) N) or one more (that one sample, Late by the paper's threshold, then trains every epoch)."""
    la, lb = Fraction(early_share), Fraction(excluded_share)
    e1, end = math.floor(la * n), math.floor((1 - lb) * n)
    assert end - e1 - math.floor((1 - la - lb) * n) in (0, 1)
    return e1, end - e1, end


ZONE_SETTINGS = [  # (N range, early_share, excluded_share, epochs, warmup_epochs, step)
    (range(20, 1201), "0.1", "0.1", 25, 5, "adaptive"),  # the defaults
    (range(5, 400, 7), "0.15", "0.05", 9, 2, "greedy"),
    (range(5, 400, 11), "0.2", "0.3", 6, 0, "linear"),
    (range(3, 300, 13), "0.45", "0.1", 4, 1, "adaptive"),  # 2 la + lb = 1: the paper's Continuous zone is empty
    (range(3, 300, 17), "0.05", "0.0", 12, 3, "adaptive"),
]


@pytest.mark.parametrize("sizes,la,lb,epochs,k,step", ZONE_SETTINGS)
def test_every_continuous_sample_trains_every_epoch(sizes, la, lb, epochs, k, step):
    """docs/methods.md's zone table: Continuous every epoch, Early in the first window and phased out (gone from the
    last epoch), Late phased in (absent from the first window, all there in the last epoch), Excluded never."""
    for n in sizes:
        # One token per response: sum and mean agree, so this checks the zones whatever the CE reduction.
        frame = make_frame(n, n).select("sample_id", "student_ce", response_tokens=pl.lit(1))
        ordered = frame.sort("student_ce", "sample_id")["sample_id"].to_list()
        # Rename every sample to its 0-based rank "00000".."0NNNN": the ranking is unchanged (ties stay in the same
        # order), and a shard's ids read as ranks without a lookup.
        frame = frame.with_columns(pl.col("sample_id").replace_strict(ordered, [f"{i:05d}" for i in range(n)]))
        config = SpectrumConfig(epochs=epochs, warmup_epochs=k, early_share=float(la), excluded_share=float(lb),
                                step=step)
        e1, m, end = zone_bounds_exact(n, la, lb)
        for reverse in (False, True):
            present = np.zeros((epochs, n), dtype=bool)  # present[j, i]: s_{i+1} is in epoch j + 1
            for j, e in enumerate(spectrum.build(frame, config, reverse=reverse)):
                present[j, e.sample_ids.cast(pl.Int64).to_numpy()] = True
            first, last = (present[-1], present[0]) if reverse else (present[0], present[-1])
            where = f"N={n}, reverse={reverse}"
            assert present[:, e1:m].all() and not present[:, end:].any(), where
            assert first[:e1].all() and not first[m:end].any(), where
            assert last[m:end].all() and not last[:e1].any(), where
            # phased out (in) once: an Early sample's epochs are a prefix, a Late sample's a suffix (reversed: swapped)
            direction = -1 if reverse else 1
            assert (direction * np.diff(present[:, :e1].astype(int), axis=0) <= 0).all(), where
            assert (direction * np.diff(present[:, m:end].astype(int), axis=0) >= 0).all(), where
