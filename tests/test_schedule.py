"""`curate schedule`: each method's formulas on hand-computed cases, invariants over random tables (hypothesis),
determinism, bad input, and the CLI with inspect and plots."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from syllabus.curate.cli import app
from syllabus.curate.schedules import dakd, l2m, spectrum, srd
from syllabus.curate.schedules.build import build_schedule
from syllabus.curate.schedules.common import ScheduleError, split_sizes
from syllabus.curate.table import write_table

runner = CliRunner()


def make_frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    student_ce = rng.lognormal(1.0, 0.4, n)
    teacher_ce = rng.lognormal(0.5, 0.3, n)
    return pl.DataFrame({
        "sample_id": [f"{i:016x}" for i in range(n)],
        "student_ce": student_ce,
        "teacher_ce": teacher_ce,
        "dds": student_ce / teacher_ce,
        "rouge_l": rng.uniform(0, 1, n),
        "output_ce": rng.lognormal(0.0, 0.5, n),
        "status": ["ok"] * n,
    })


def table_at(tmp_path, frame, name="table"):
    return write_table(frame, tmp_path / name, {"kind": "difficulty_table"})


# ---------------------------------------------------------------- golden cases, by hand

def test_split_sizes_put_the_remainder_on_the_easiest():
    assert split_sizes(10, 4) == [3, 3, 2, 2]
    assert split_sizes(9, 3) == [3, 3, 3]


def test_srd_rrf_scores_by_hand():
    frame = pl.DataFrame({"sample_id": ["a", "b", "c"], "rouge_l": [0.9, 0.5, 0.1], "output_ce": [3.0, 1.0, 2.0]})
    scored = srd.rrf_scores(frame, "output_ce").sort("sample_id")
    # a: r_rouge 1, r_ce 3; b: 2, 1; c: 3, 2
    assert scored["f"].to_list() == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])
    assert srd.rrf_scores(frame, "output_ce")["sample_id"].to_list() == ["b", "a", "c"]


def test_srd_keeps_top_lambda_and_builds_cumulative_stages_with_ladders():
    frame = make_frame(40)
    epochs = srd.build(frame, srd.SRDConfig(stages=3, epochs_per_stage=2, keep=0.75))
    kept = srd.subsets(frame, srd.SRDConfig(keep=0.75))
    assert sum(map(len, kept)) == 30 and [len(k) for k in kept] == [10, 10, 10]
    assert [len(e.sample_ids) for e in epochs] == [10, 10, 20, 20, 30, 30]
    assert [e.temperature for e in epochs] == [1.0, 1.0, 1.5, 1.5, 2.0, 2.0]
    assert [round(1 - e.kd_weight, 6) for e in epochs] == [0.3, 0.3, 0.2, 0.2, 0.1, 0.1]
    assert [e.restart_optimizer for e in epochs] == [False, False, True, False, True, False]
    ranked = srd.rrf_scores(frame, "output_ce")["sample_id"].to_list()
    assert set(epochs[-1].sample_ids) == set(ranked[:30])  # the hardest quarter never appears


def test_l2m_ladders_of_eq_6_and_7():
    epochs = l2m.build(make_frame(10), l2m.L2MConfig())
    assert [len(e.sample_ids) for e in epochs] == [3, 3, 6, 6, 8, 8, 10, 10]  # 3,3,2,2 cumulative
    assert [e.loss_params["skew"] for e in epochs[::2]] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert [e.kd_weight for e in epochs[::2]] == pytest.approx([0.7, 0.8, 0.9, 1.0])
    assert all(e.loss == "skl" for e in epochs)


def test_l2m_ranks_by_rouge_then_student_ce():
    frame = pl.DataFrame({"sample_id": list("abcd"), "rouge_l": [0.2, 0.9, 0.9, 0.1], "student_ce": [1.0, 2.0, 1.0, 1.0]})
    parts = l2m.subsets(frame, 4)
    assert [p[0] for p in parts] == ["c", "b", "a", "d"]


def test_spectrum_zones_and_window_by_hand():
    assert spectrum.zone_bounds(100, 0.1, 0.1) == (10, 80, 90)
    diff = np.arange(1.0, 11.0)  # 10 rows, difficulty 1..10
    # window 6 of the first 8 (lb excludes 2); 2 slides: td rises 12 in all, 6 per epoch = 1 position each
    assert spectrum.window_starts(diff, m=6, end=8, slides=2, step="adaptive") == [1, 2]
    assert spectrum.window_starts(diff, m=6, end=8, slides=2, step="linear") == [1, 2]


def test_dakd_reproduces_table_3():
    """1,963 of the baseline's 3,570 iterations over 10 epochs (cosine): the epoch index enters Eq. 2 0-based."""
    per_epoch = 3570 / 10
    cosine = sum(dakd.ratio(e, 10, "cosine") for e in range(10))
    assert cosine == pytest.approx(5.5)
    assert math.floor(cosine * per_epoch) == 1963
    one_based = sum(0.5 * math.cos(math.pi * e / 10) + 0.5 for e in range(1, 11))
    assert math.floor(one_based * per_epoch) != 1963  # the literal reading does not match the paper
    assert dakd.ratio(0, 10, "linear") == 1.0 and dakd.ratio(5, 10, "linear") == 0.5


def test_dakd_stratified_draw_by_hand():
    frame = pl.DataFrame({"sample_id": [f"s{i:02d}" for i in range(20)], "dds": [float(20 - i) for i in range(20)]})
    ids = dakd.select_epoch(frame, epoch=5, num_epochs=10, seed=0)  # cosine r = 0.5 -> 10 rows
    assert len(ids) == 10 and len(set(ids)) == 10
    high = {f"s{i:02d}" for i in range(10)}
    assert sum(i in high for i in ids) == 9  # (1 - tau) of |D_high|, tau = 0.1
    assert dakd.select_epoch(frame, epoch=0, num_epochs=10, seed=0) == [f"s{i:02d}" for i in range(20)]


# ---------------------------------------------------------------- invariants over random tables

@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 400), la=st.floats(0.0, 0.3), lb=st.floats(0.0, 0.3), epochs=st.integers(2, 12),
       warmup=st.integers(0, 3), seed=st.integers(0, 1000), step=st.sampled_from(spectrum.STEPS))
def test_spectrum_invariants(n, la, lb, epochs, warmup, seed, step):
    if 2 * la + lb > 1 or warmup >= epochs or math.floor((1 - la - lb) * n) < 1:
        return
    frame = make_frame(n, seed)
    config = spectrum.SpectrumConfig(epochs=epochs, warmup_epochs=warmup, la=la, lb=lb, step=step)
    result = spectrum.build(frame, config)
    ordered = frame.sort(["student_ce", "sample_id"])["sample_id"].to_list()
    position = {s: i for i, s in enumerate(ordered)}
    _, m, end = spectrum.zone_bounds(n, la, lb)
    excluded = set(ordered[end:])
    starts = [min(position[s] for s in e.sample_ids) for e in result]
    assert len(result) == epochs
    assert all(len(e.sample_ids) == m for e in result)  # constant window
    assert all(not excluded & set(e.sample_ids) for e in result)  # Excluded never trained on
    assert all(e.sample_ids == result[0].sample_ids for e in result[: warmup + 1])  # warm-up epochs equal
    assert starts == sorted(starts)  # the window only moves right
    if epochs - warmup - 1 > 0:
        assert max(position[s] for s in result[-1].sample_ids) == end - 1  # last window ends at (1 - lb) N
    temps = [e.temperature for e in result]
    assert temps[0] == 1.0 and temps[-1] == pytest.approx(2.0) and temps == sorted(temps)


def test_spectrum_adaptive_rises_evenly():
    """Each post-warm-up increment of summed difficulty is within one sample's spread of the average."""
    frame = make_frame(1000, 3)
    result = spectrum.build(frame, spectrum.SpectrumConfig(epochs=12, warmup_epochs=2))
    ce = dict(zip(frame["sample_id"], frame["student_ce"]))
    td = [sum(ce[s] for s in e.sample_ids) for e in result[2:]]
    rises = np.diff(td)
    avg = (td[-1] - td[0]) / (len(td) - 1)
    max_step = max(frame["student_ce"]) - min(frame["student_ce"])
    assert np.all(np.abs(rises - avg) <= max_step)
    greedy = spectrum.build(frame, spectrum.SpectrumConfig(epochs=12, warmup_epochs=2, step="greedy"))
    greedy_td = [sum(ce[s] for s in e.sample_ids) for e in greedy[2:]]
    assert np.std(np.diff(greedy_td)) >= np.std(rises)  # the literal loop is less even


@settings(max_examples=40, deadline=None)
@given(n=st.integers(8, 300), keep=st.floats(0.3, 1.0), stages=st.integers(1, 5), seed=st.integers(0, 100))
def test_srd_invariants(n, keep, stages, seed):
    if int(keep * n) < stages:
        return
    parts = srd.subsets(make_frame(n, seed), srd.SRDConfig(keep=keep, stages=stages))
    sizes = [len(p) for p in parts]
    assert sum(sizes) == int(keep * n) and max(sizes) - min(sizes) <= 1
    assert len({s for p in parts for s in p}) == sum(sizes)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 500), epochs=st.integers(1, 15), decay=st.sampled_from(dakd.DECAYS),
       tau=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_dakd_invariants(n, epochs, decay, tau, seed):
    frame = make_frame(n, seed).select("sample_id", "dds")
    result = dakd.build(frame, dakd.DAKDConfig(epochs=epochs, decay=decay, tau=tau), seed)
    assert len(result[0].sample_ids) == n  # epoch 1: all rows
    sizes = [len(e.sample_ids) for e in result]
    assert all(s >= 1 for s in sizes) and sizes == sorted(sizes, reverse=True)
    assert all(len(set(e.sample_ids)) == len(e.sample_ids) for e in result)
    assert [e.rescore for e in result] == [False] + [True] * (epochs - 1)
    for e, size in enumerate(sizes):
        assert size == dakd.epoch_size(e, epochs, n, decay)


def test_reverse_gives_hard_to_easy(tmp_path):
    frame = make_frame(60)
    fwd = srd.build(frame, srd.SRDConfig(stages=3, epochs_per_stage=1))
    rev = srd.build(frame, srd.SRDConfig(stages=3, epochs_per_stage=1), reverse=True)
    assert set(rev[0].sample_ids) == set(fwd[-1].sample_ids) - set(fwd[1].sample_ids)  # hardest subset first
    sp = spectrum.build(frame, spectrum.SpectrumConfig(epochs=6, warmup_epochs=1), reverse=True)
    sp_fwd = spectrum.build(frame, spectrum.SpectrumConfig(epochs=6, warmup_epochs=1))
    assert [e.sample_ids for e in sp] == [e.sample_ids for e in sp_fwd][::-1]


# ---------------------------------------------------------------- library + CLI

@pytest.mark.parametrize("method,params", [
    ("spectrum", {"epochs": 6, "warmup_epochs": 1}), ("srd", {"epochs": 3}), ("l2m", {}), ("dakd", {"epochs": 4}),
    ("full", {"epochs": 2}), ("random", {"epochs": 3, "fraction": 0.5}),
])
def test_every_method_writes_a_deterministic_schedule(tmp_path, method, params):
    table = table_at(tmp_path, make_frame(50))
    a, _ = build_schedule(table.path, method, tmp_path / "a", params, seed=3)
    b, _ = build_schedule(table.path, method, tmp_path / "b", params, seed=3)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "manifest.json" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["table"]["fingerprint"] == table.fingerprint and manifest["method"] == method
    for e in manifest["epochs"]:
        shard = pl.read_parquet(a / e["shard"])
        assert shard.height == e["num_samples"] and shard["sample_id"].is_unique().all()


def test_random_takes_sizes_from_another_schedule(tmp_path):
    table = table_at(tmp_path, make_frame(80))
    dk, _ = build_schedule(table.path, "dakd", tmp_path / "dakd", {"epochs": 5})
    rnd, _ = build_schedule(table.path, "random", tmp_path / "rnd", {"sizes_from": str(dk)})
    sizes = lambda p: [e["num_samples"] for e in json.loads((p / "manifest.json").read_text())["epochs"]]
    assert sizes(rnd) == sizes(dk)


def test_bad_input_names_the_problem(tmp_path):
    frame = make_frame(30)
    no_rouge = table_at(tmp_path, frame.drop("rouge_l"), "no_rouge")
    with pytest.raises(ScheduleError, match="needs column.*rouge_l"):
        build_schedule(no_rouge.path, "srd", tmp_path / "s1")
    with pytest.raises(ScheduleError, match="2\\*la \\+ lb <= 1"):
        build_schedule(no_rouge.path, "spectrum", tmp_path / "s2", {"la": 0.5, "lb": 0.2})
    with pytest.raises(ScheduleError, match="unknown parameter.*lambda_a"):
        build_schedule(no_rouge.path, "spectrum", tmp_path / "s3", {"lambda_a": 0.1})
    with pytest.raises(ScheduleError, match="parameter tau must be in"):
        build_schedule(no_rouge.path, "dakd", tmp_path / "s4", {"tau": 2})
    with pytest.raises(ScheduleError, match="multiple of 3"):
        build_schedule(no_rouge.path, "srd", tmp_path / "s5", {"epochs": 4})
    nulls = frame.with_columns(status=pl.when(pl.col("sample_id") < "0000000000000003").then(pl.lit("too_long"))
                               .otherwise(pl.lit("ok")),
                               dds=pl.when(pl.col("sample_id") == "0000000000000005").then(None).otherwise(pl.col("dds")))
    t = table_at(tmp_path, nulls, "nulls")
    _, excluded = build_schedule(t.path, "dakd", tmp_path / "s6", {"epochs": 2})
    assert excluded == {"status too_long": 3, "null or NaN dds": 1}
    with pytest.raises(ScheduleError, match="holds another schedule"):
        build_schedule(t.path, "dakd", tmp_path / "s6", {"epochs": 2})
    empty = table_at(tmp_path, frame.with_columns(status=pl.lit("too_long")), "empty")
    with pytest.raises(ScheduleError, match="no usable row"):
        build_schedule(empty.path, "full", tmp_path / "s7")


def test_cli_schedule_config_inspect_and_plots(tmp_path):
    table = table_at(tmp_path, make_frame(120))
    cfg = tmp_path / "srd.yaml"
    cfg.write_text("method: srd\nepochs: 6\nkeep: 0.75\nseed: 1\n")
    result = runner.invoke(app, ["schedule", str(table.path), "--config", str(cfg), "--out", str(tmp_path / "srd")])
    assert result.exit_code == 0, result.output
    assert "method srd, 6 epochs" in result.output and "restart" in result.output
    result = runner.invoke(app, ["schedule", str(table.path), "--method", "dakd", "--epochs", "5", "-p", "decay=linear",
                                 "--out", str(tmp_path / "dakd")])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["schedule", str(table.path), "--method", "srd", "-p", "keep=1.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "parameter keep" in bad.output
    plots = tmp_path / "plots"
    shown = runner.invoke(app, ["inspect", str(tmp_path / "srd"), str(tmp_path / "dakd"), "--plots", str(plots)])
    assert shown.exit_code == 0, shown.output
    assert (plots / "curricula.png").stat().st_size > 10_000
    shown = runner.invoke(app, ["inspect", str(table.path), "--plots", str(plots)])
    assert shown.exit_code == 0, shown.output
    assert (plots / "student_ce_histogram.png").exists() and (plots / "student_ce_spectrum.png").exists()
