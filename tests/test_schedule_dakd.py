"""DA-KD: Eq. 2 ratios (and the Table 3 figure that pins the epoch index), stratified sampling, rescore marks."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus.curate.schedules import dakd
from syllabus.curate.schedules.config import ScheduleError
from syllabus.curate.schedules.dakd import DAKDConfig
from test_schedule_support import ids_of, make_frame


def test_table_3_iterations_pin_a_zero_based_epoch_index():
    """Table 3: 1,963 of the baseline's 3,570 iterations over 10 epochs, cosine decay."""
    per_epoch = 3570 / 10
    zero_based = sum(dakd.ratio(e, 10, "cosine") for e in range(10))  # e = 0..9
    assert zero_based == pytest.approx(5.5)
    assert math.floor(zero_based * per_epoch) == 1963
    one_based = [0.5 * math.cos(math.pi * e / 10) + 0.5 for e in range(1, 11)]  # Eq. 2 read with e = 1..10
    assert math.floor(sum(one_based) * per_epoch) == 1606 and one_based[-1] == pytest.approx(0.0)
    assert dakd.ratio(0, 10, "cosine") == 1.0  # epoch 1 uses all the data


def test_ratios_and_sizes_by_hand():
    assert [dakd.ratio(e, 4, "cosine") for e in range(4)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.sqrt(0.5), 0.5, 0.5 - 0.5 * math.sqrt(0.5)])
    assert [dakd.ratio(e, 4, "linear") for e in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    # N = 10: 8.54 -> 9, 1.46 -> 1; linear 7.5 -> 8 and 2.5 -> 3 (halves up)
    assert [dakd.epoch_size(e, 4, 10, "cosine") for e in range(4)] == [10, 9, 5, 1]
    assert [dakd.epoch_size(e, 4, 10, "linear") for e in range(4)] == [10, 8, 5, 3]
    assert dakd.epoch_size(9, 10, 3, "cosine") == 1  # r N = 0.07: clamped so that no epoch is empty


def test_stratum_counts_by_hand():
    assert dakd.stratum_counts(10, 20, 0.1) == (9, 1)
    assert dakd.stratum_counts(9, 10, 0.1) == (8, 1)  # 8.1 from D_high, the rest from D_low
    assert dakd.stratum_counts(5, 10, 0.1) == (5, 0)  # 4.5 rounds up to 5
    assert dakd.stratum_counts(10, 11, 0.5) == (9, 1)  # D_low holds one row: D_high fills in
    assert dakd.stratum_counts(7, 100, 0.0) == (7, 0)  # tau = 0: "w/o SDU"


def test_stratified_draw_by_hand():
    frame = pl.DataFrame({"sample_id": [f"s{i:02d}" for i in range(20)], "dds": [float(20 - i) for i in range(20)]})
    ids = dakd.select_epoch(frame, epoch=5, num_epochs=10, seed=0)  # cosine r = 0.5 -> 10 rows
    high = {f"s{i:02d}" for i in range(10)}  # the 10 highest dds
    assert len(ids) == 10 and len(set(ids)) == 10
    assert sum(i in high for i in ids) == 9 and ids[:9] == sorted(ids[:9])  # (1 - tau) |D_high|, in dds order
    assert dakd.select_epoch(frame, epoch=0, num_epochs=10, seed=0) == [f"s{i:02d}" for i in range(20)]
    low_first = dakd.select_epoch(frame, epoch=5, num_epochs=10, seed=0, reverse=True)
    assert sum(i not in high for i in low_first) == 9  # reverse: the low-DDS rows are prioritised


def test_seed_decides_the_draw_and_is_recorded_per_epoch():
    frame = make_frame(200).select("sample_id", "dds")
    a = dakd.select_epoch(frame, 3, 10, seed=1)
    assert a == dakd.select_epoch(frame, 3, 10, seed=1)
    assert a != dakd.select_epoch(frame, 3, 10, seed=2)
    assert a != dakd.select_epoch(frame, 4, 10, seed=1)[: len(a)]


def test_select_epoch_refuses_bad_input():
    frame = pl.DataFrame({"sample_id": ["a", "b"], "dds": [1.0, float("nan")]})
    with pytest.raises(ScheduleError, match="dds is null, NaN or infinite for 1 row.*sample_id b"):
        dakd.select_epoch(frame, 1, 3, seed=0)
    with pytest.raises(ScheduleError, match="epoch 3 is outside"):
        dakd.select_epoch(frame.head(1), 3, 3, seed=0)
    with pytest.raises(ScheduleError, match="parameter low_share must be in"):
        DAKDConfig(low_share=2.0)
    with pytest.raises(ScheduleError, match="parameter decay must be one of"):
        DAKDConfig(decay="step")


def test_loss_rescore_and_static_mode():
    frame = make_frame(30).select("sample_id", "dds")
    epochs = dakd.build(frame, DAKDConfig(epochs=4), seed=0)
    assert [e.plan.rescore for e in epochs] == [False, True, True, True]
    assert all(e.plan.loss == "bdl" and e.plan.loss_params == {"lambda": 0.9} and e.plan.kd_weight == 1.0 for e in epochs)
    assert not any(e.plan.rescore for e in dakd.build(frame, DAKDConfig(epochs=4, dynamic=False), seed=0))
    assert dakd.build(frame, DAKDConfig(epochs=2, loss_params={"lambda": 0.7}), 0)[0].plan.loss_params == {"lambda": 0.7}
    assert dakd.build(frame, DAKDConfig(epochs=2, loss="kld"), 0)[0].plan.loss_params == {}
    assert dakd.selection_params({"decay": "linear", "low_share": 0.2, "reverse": True, "epochs": 3}) == {
        "decay": "linear", "low_share": 0.2, "reverse": True}
    with pytest.raises(ScheduleError, match="lack low_share; rebuild the schedule"):
        dakd.selection_params({"decay": "linear", "tau": 0.2, "reverse": True})  # a manifest of an earlier version


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), epochs=st.integers(1, 15), decay=st.sampled_from(dakd.DECAYS),
       tau=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), seed=st.integers(0, 10_000), ties=st.booleans())
def test_invariants_over_random_tables(n, epochs, decay, tau, seed, ties):
    frame = make_frame(n, seed, ties).select("sample_id", "dds")
    result = dakd.build(frame, DAKDConfig(epochs=epochs, decay=decay, low_share=tau), seed)
    order = [r[0] for r in sorted(frame.iter_rows(), key=lambda r: (-r[1], r[0]))]
    assert ids_of(result[0]) == order  # epoch 1: every row
    for e, epoch in enumerate(result):
        ids = ids_of(epoch)
        r = 1 - e / epochs if decay == "linear" else 0.5 * math.cos(math.pi * e / epochs) + 0.5
        size = min(n, max(1, math.floor(r * n + 0.5)))
        assert len(ids) == size and len(set(ids)) == size  # |epoch| = r N; no sample twice
        high = set(order[:size])
        from_high = sum(i in high for i in ids)
        want_high = math.floor((1 - tau) * size + 0.5)
        assert from_high == max(want_high, size - (n - size))  # (1 - tau)|D_high| unless D_low runs short
        assert epoch.plan.rescore == (e > 0)
        # the trainer's dynamic mode reselects with the same function: same ids on the same dds
        assert dakd.select_epoch(frame, e, epochs, seed, decay, tau) == ids
