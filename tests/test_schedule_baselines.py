"""Baselines: `full`, and `random` with fixed sizes or sizes (and settings) taken from another schedule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus.curate.schedules import baselines
from syllabus.curate.schedules.baselines import FullConfig, RandomConfig
from syllabus.curate.schedules.build import build_schedule
from syllabus.curate.schedules.config import ScheduleError
from test_schedule_support import ids_of, make_frame, write


def test_full_trains_on_every_row_every_epoch():
    frame = make_frame(30)
    epochs = baselines.build_full(frame, FullConfig())
    assert len(epochs) == 20
    assert all(ids_of(e) == sorted(frame["sample_id"]) for e in epochs)
    assert all(e.plan.loss == "kld" and e.plan.kd_weight == 1.0 and e.plan.temperature == 1.0 and not e.plan.rescore for e in epochs)
    bdl = baselines.build_full(frame, FullConfig(epochs=2, loss="bdl"))  # DA-KD's "w/o DiffUp"
    assert bdl[0].plan.loss_params == {"lambda": 0.9}


def test_random_needs_exactly_one_size_source():
    with pytest.raises(ScheduleError, match="exactly one of the parameters fraction, size, sizes_from .got none"):
        RandomConfig()
    with pytest.raises(ScheduleError, match="got fraction, size"):
        RandomConfig(fraction=0.5, size=3)
    with pytest.raises(ScheduleError, match=r"parameter fraction must be in \(0, 1\]"):
        RandomConfig(fraction=0.0)
    with pytest.raises(ScheduleError, match="parameter size: 40 samples per epoch, but the table has 30"):
        baselines.build_random(make_frame(30), RandomConfig(size=40), seed=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), fraction=st.sampled_from([0.01, 0.3, 0.5, 1.0]), epochs=st.integers(1, 8),
       seed=st.integers(0, 10_000))
def test_random_subsets_over_random_tables(n, fraction, epochs, seed):
    frame = make_frame(n, seed)
    result = baselines.build_random(frame, RandomConfig(fraction=fraction, epochs=epochs), seed)
    size = max(1, int(fraction * n + 1e-9))
    everyone = set(frame["sample_id"])
    assert len(result) == epochs
    for e in result:
        ids = ids_of(e)
        assert len(ids) == size and len(set(ids)) == size and set(ids) <= everyone and ids == sorted(ids)
    assert [ids_of(e) for e in result] == [ids_of(e) for e in baselines.build_random(
        frame, RandomConfig(fraction=fraction, epochs=epochs), seed)]


def test_random_draws_differ_between_epochs_and_seeds():
    frame = make_frame(100)
    a = baselines.build_random(frame, RandomConfig(size=10, epochs=2), seed=0)
    b = baselines.build_random(frame, RandomConfig(size=10, epochs=2), seed=1)
    assert ids_of(a[0]) != ids_of(a[1]) and ids_of(a[0]) != ids_of(b[0])


def test_random_takes_sizes_and_settings_from_another_schedule(tmp_path):
    """DA-KD's "w/o DDS": as many samples per epoch as DA-KD, with its loss, chosen at random."""
    table = write(tmp_path, make_frame(80))
    dk, _ = build_schedule(table.path, "dakd", tmp_path / "dakd", {"epochs": 5, "loss_params": {"lambda": 0.8}})
    rnd, _ = build_schedule(table.path, "random", tmp_path / "rnd", {"sizes_from": str(dk)}, seed=4)
    source = json.loads((dk / "manifest.json").read_text())["epochs"]
    copied = json.loads((rnd / "manifest.json").read_text())["epochs"]
    assert [e["num_samples"] for e in copied] == [e["num_samples"] for e in source] == [80, 72, 52, 28, 8]
    assert all(e["loss"] == "bdl" and e["loss_params"] == {"lambda": 0.8} and not e["rescore"] for e in copied)
    kld, _ = build_schedule(table.path, "random", tmp_path / "kld", {"sizes_from": str(dk), "loss": "kld"})
    assert {e["loss"] for e in json.loads((kld / "manifest.json").read_text())["epochs"]} == {"kld"}
    with pytest.raises(ScheduleError, match="parameter epochs: 3 given, but sizes_from .* has 5 epochs"):
        build_schedule(table.path, "random", tmp_path / "x", {"sizes_from": str(dk), "epochs": 3})
    with pytest.raises(ScheduleError, match="no manifest.json"):
        build_schedule(table.path, "random", tmp_path / "y", {"sizes_from": str(tmp_path)})
    small = write(tmp_path, make_frame(20), "small")
    with pytest.raises(ScheduleError, match="parameter sizes_from: epoch 1 .* has 80 samples, but this table has 20"):
        build_schedule(small.path, "random", tmp_path / "z", {"sizes_from": str(dk)})
    with pytest.raises(ScheduleError, match="--reverse has no meaning for method random"):
        build_schedule(table.path, "random", tmp_path / "r", {"size": 3}, reverse=True)
