"""The schedule directory: manifest contents, byte-identical output, loss overrides, and every kind of bad input."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from syllabus.curate.schedules.build import build_schedule, make_config
from syllabus.curate.schedules.config import ScheduleError
from test_schedule_support import make_frame, write

SMALL = {
    "spectrum": {"epochs": 6, "warmup_epochs": 1},
    "srd": {"epochs": 3},
    "l2m": {},
    "dakd": {"epochs": 4},
    "full": {"epochs": 2},
    "random": {"epochs": 3, "fraction": 0.5},
}
EPOCH_KEYS = {"epoch", "shard", "num_samples", "stage", "temperature", "kd_weight", "loss", "loss_params",
              "restart_optimizer", "rescore"}


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize("method", list(SMALL))
def test_every_method_writes_a_complete_deterministic_schedule(tmp_path, method):
    frame = make_frame(50)
    table = write(tmp_path, frame)
    a, excluded = build_schedule(table.path, method, tmp_path / "a", SMALL[method], seed=3)
    b, _ = build_schedule(table.path, method, tmp_path / "b", SMALL[method], seed=3)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    m = manifest(a)
    assert excluded == {} and m["excluded"] == {}
    assert m["schema_version"] == 1 and m["method"] == method and m["seed"] == 3
    assert m["table"]["fingerprint"] == table.fingerprint and m["table"]["path"] == str(table.path.resolve())
    given = {"epochs_per_stage": 1} if method == "srd" else SMALL[method]  # srd: 3 epochs = 3 stages x 1
    assert m["params"] == {**m["params"], **given}
    assert m["params"]["reverse"] is False and "loss" in m["params"]
    assert files == sorted(["manifest.json", *(f"epoch-{i:03d}.parquet" for i in range(len(m["epochs"])))])
    usable = set(frame["sample_id"])
    for i, e in enumerate(m["epochs"]):
        assert set(e) == EPOCH_KEYS and e["epoch"] == i + 1 and e["shard"] == f"epoch-{i:03d}.parquet"
        assert isinstance(e["restart_optimizer"], bool) and isinstance(e["rescore"], bool)
        shard = pl.read_parquet(a / e["shard"])
        assert shard.columns == ["sample_id"] and shard.height == e["num_samples"] > 0
        assert shard["sample_id"].is_unique().all() and set(shard["sample_id"]) <= usable
    assert m["total_samples"] == sum(e["num_samples"] for e in m["epochs"])


@pytest.mark.parametrize("method", list(SMALL))
def test_output_does_not_depend_on_the_tables_row_order(tmp_path, method):
    frame = make_frame(60, 5)
    a, _ = build_schedule(write(tmp_path, frame, "t1").path, method, tmp_path / "a", SMALL[method], seed=1)
    b, _ = build_schedule(write(tmp_path, frame.reverse(), "t2").path, method, tmp_path / "b", SMALL[method], seed=1)
    for e in manifest(a)["epochs"]:
        assert (a / e["shard"]).read_bytes() == (b / e["shard"]).read_bytes()
    assert manifest(a)["table"]["fingerprint"] == manifest(b)["table"]["fingerprint"]


def test_the_seed_changes_only_random_draws(tmp_path):
    table = write(tmp_path, make_frame(60))
    for method, changes in (("dakd", True), ("random", True), ("spectrum", False)):
        a, _ = build_schedule(table.path, method, tmp_path / f"{method}0", SMALL[method], seed=0)
        b, _ = build_schedule(table.path, method, tmp_path / f"{method}1", SMALL[method], seed=1)
        shards = lambda p: [(p / e["shard"]).read_bytes() for e in manifest(p)["epochs"]]  # noqa: E731
        assert (shards(a) != shards(b)) == changes, method


@pytest.mark.parametrize("method", list(SMALL))
def test_loss_and_loss_params_apply_to_every_method(tmp_path, method):
    table = write(tmp_path, make_frame(40))
    params = {**SMALL[method], "loss": "jsd", "loss_params": {"beta": 0.3}}
    out, _ = build_schedule(table.path, method, tmp_path / "s", params)
    assert all(e["loss"] == "jsd" and e["loss_params"] == {"beta": 0.3} for e in manifest(out)["epochs"])
    skl, _ = build_schedule(table.path, method, tmp_path / "skl", {**SMALL[method], "loss": "skl"})
    assert all(set(e["loss_params"]) == {"skew"} for e in manifest(skl)["epochs"])  # every parameter is written
    with pytest.raises(ScheduleError, match="parameter loss_params.skew: loss kld does not read it"):
        make_config(method, {**SMALL[method], "loss": "kld", "loss_params": {"skew": 0.1}})
    with pytest.raises(ScheduleError, match="parameter loss must be one of"):
        make_config(method, {**SMALL[method], "loss": "kl"})
    with pytest.raises(ScheduleError, match=r"beta of 'jsd' must be in \(0, 1\)"):  # the trainer's own rule
        make_config(method, {**SMALL[method], "loss": "jsd", "loss_params": {"beta": 1.0}})


def test_default_losses_per_method(tmp_path):
    table = write(tmp_path, make_frame(40))
    expected = {"spectrum": ("kld", 0.7), "srd": ("kld", 0.7), "l2m": ("skl", 0.7), "dakd": ("bdl", 1.0),
                "full": ("kld", 1.0), "random": ("kld", 1.0)}
    for method, (loss, kd_weight) in expected.items():
        out, _ = build_schedule(table.path, method, tmp_path / method, SMALL[method])
        first = manifest(out)["epochs"][0]
        assert (first["loss"], first["kd_weight"]) == (loss, kd_weight), method


def test_missing_columns_are_named(tmp_path):
    frame = make_frame(30)
    for method, column in (("srd", "rouge_l"), ("dakd", "dds"), ("l2m", "student_ce"), ("spectrum", "student_ce")):
        table = write(tmp_path, frame.drop(column), f"no_{column}_{method}")
        with pytest.raises(ScheduleError, match=f"method {method} needs column.s. {column}, which the table lacks"):
            build_schedule(table.path, method, tmp_path / f"s_{method}")
    srd_ce = write(tmp_path, frame.drop("output_ce"), "no_output_ce")
    with pytest.raises(ScheduleError, match="output_ce"):
        build_schedule(srd_ce.path, "srd", tmp_path / "srd_out")
    build_schedule(srd_ce.path, "srd", tmp_path / "srd_ref", {"ce_column": "student_ce"})  # the reference code's CE


def test_unusable_rows_are_excluded_and_counted_by_reason(tmp_path):
    frame = make_frame(30).with_row_index("i").with_columns(
        status=pl.when(pl.col("i") < 3).then(pl.lit("too_long"))
        .when(pl.col("i") == 3).then(pl.lit("error: oom")).otherwise(pl.lit("ok")),
        dds=pl.when(pl.col("i") == 5).then(None).when(pl.col("i") == 6).then(float("nan"))
        .when(pl.col("i") == 7).then(float("inf")).otherwise(pl.col("dds")),
    ).drop("i")
    table = write(tmp_path, frame)
    out, excluded = build_schedule(table.path, "dakd", tmp_path / "dakd", {"epochs": 2})
    assert excluded == {"status too_long": 3, "status error: oom": 1, "null/NaN/inf dds": 3}
    m = manifest(out)
    assert m["excluded"] == excluded and m["table"]["usable_rows"] == 23 and m["table"]["num_rows"] == 30
    bad_ids = {frame["sample_id"][i] for i in (0, 1, 2, 3, 5, 6, 7)}
    assert not bad_ids & set(pl.read_parquet(out / "epoch-000.parquet")["sample_id"])
    _, full_excluded = build_schedule(table.path, "full", tmp_path / "full", {"epochs": 1})
    assert full_excluded == {"status too_long": 3, "status error: oom": 1}  # full ranks by nothing


def test_rows_without_tokens_to_sum_over_are_excluded_and_counted(tmp_path):
    """A summed CE reads a token count: a null count, or 0 (a CE summed over no token would rank the row as the
    easiest), excludes the row with its reason; the per-token mean does not read the count."""
    frame = make_frame(30).with_row_index("i").with_columns(
        output_tokens=pl.when(pl.col("i") == 0).then(None).when(pl.col("i").is_in([1, 2])).then(0)
        .otherwise(pl.col("output_tokens")),
        response_tokens=pl.when(pl.col("i") == 3).then(0).otherwise(pl.col("response_tokens")),
    ).drop("i")
    table = write(tmp_path, frame)
    out, excluded = build_schedule(table.path, "srd", tmp_path / "srd", {"epochs": 3})
    assert excluded == {"null/NaN/inf output_tokens": 1, "output_tokens < 1": 2}
    assert manifest(out)["excluded"] == excluded and manifest(out)["params"]["ce_reduction"] == "sum"
    assert build_schedule(table.path, "srd", tmp_path / "mean", {"epochs": 3, "ce_reduction": "mean"})[1] == {}
    _, by_truth = build_schedule(table.path, "spectrum", tmp_path / "spectrum", SMALL["spectrum"])
    assert by_truth == {"response_tokens < 1": 1}
    _, ties = build_schedule(table.path, "l2m", tmp_path / "l2m", {"tie_column": "output_ce"})
    assert ties == {"null/NaN/inf output_tokens": 1, "output_tokens < 1": 2}
    _, dds = build_schedule(table.path, "dakd", tmp_path / "dakd", SMALL["dakd"])
    assert dds == {}  # DDS is a ratio of two CEs over the same tokens: no reduction, no count read
    no_counts = write(tmp_path, make_frame(30).drop("response_tokens"), "no_counts")
    with pytest.raises(ScheduleError, match="needs column.s. response_tokens, .* -p ce_reduction=mean"):
        build_schedule(no_counts.path, "spectrum", tmp_path / "x")
    build_schedule(no_counts.path, "spectrum", tmp_path / "y", {**SMALL["spectrum"], "ce_reduction": "mean"})


def test_empty_and_unusable_tables(tmp_path):
    empty = write(tmp_path, make_frame(5).head(0), "empty")
    with pytest.raises(ScheduleError, match="the table has no rows"):
        build_schedule(empty.path, "full", tmp_path / "a")
    failed = write(tmp_path, make_frame(5).with_columns(status=pl.lit("too_long")), "failed")
    with pytest.raises(ScheduleError, match="no usable row for method spectrum .excluded: {'status too_long': 5}"):
        build_schedule(failed.path, "spectrum", tmp_path / "b")


def test_parameters_are_checked_by_name_and_type(tmp_path):
    with pytest.raises(ScheduleError, match="method spectrum: unknown parameter.s. lambda_a; valid: .*early_share"):
        make_config("spectrum", {"lambda_a": 0.1})
    with pytest.raises(ScheduleError, match="method dakd: unknown parameter.s. la"):
        make_config("dakd", {"la": 0.1})
    with pytest.raises(ScheduleError, match="parameter early_share: expected float, got 'high'"):
        make_config("spectrum", {"early_share": "high"})
    with pytest.raises(ScheduleError, match=r"unknown parameter.s. la;.*\(la is now early_share\)"):
        make_config("spectrum", {"la": 0.1})  # the spelling of an earlier version names its replacement
    with pytest.raises(ScheduleError, match="parameter epochs: expected int, got 2.5"):
        make_config("dakd", {"epochs": 2.5})
    with pytest.raises(ScheduleError, match="parameter dynamic: expected bool"):
        make_config("dakd", {"dynamic": "yes"})
    with pytest.raises(ScheduleError, match="epochs must be a positive multiple of 3 .got 4."):
        make_config("srd", {"epochs": 4})
    assert make_config("l2m", {"epochs": 12, "stages": 3}).epochs_per_stage == 4
    assert make_config("spectrum", {"early_share": 0, "epochs": 8.0}).epochs == 8  # ints for floats, integral floats for ints
    with pytest.raises(ScheduleError, match="unknown method 'curriculum'"):
        make_config("curriculum", {})


def test_output_directory_rules(tmp_path):
    table = write(tmp_path, make_frame(40))
    out, _ = build_schedule(table.path, "full", tmp_path / "s", {"epochs": 3})
    before = (out / "manifest.json").read_bytes()
    build_schedule(table.path, "full", out, {"epochs": 3})  # the same schedule again: a harmless rerun
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(ScheduleError, match=f"--out {out} holds another schedule .differs in params.epochs: 3 -> 2.; "
                                            ".* --overwrite"):
        build_schedule(table.path, "full", out, {"epochs": 2})
    build_schedule(table.path, "full", out, {"epochs": 2}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["epoch-000.parquet", "epoch-001.parquet", "manifest.json"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ScheduleError, match=r"holds files that are not a Syllabus output \(notes.txt\)"):
        build_schedule(table.path, "full", other)
    with pytest.raises(ScheduleError, match="is a file"):
        build_schedule(table.path, "full", other / "notes.txt")


def test_shards_hold_the_computed_epochs_in_order(tmp_path):
    from syllabus.curate.schedules import spectrum

    frame = make_frame(70)
    table = write(tmp_path, frame)
    out, _ = build_schedule(table.path, "spectrum", tmp_path / "s", {"epochs": 5, "warmup_epochs": 1})
    expected = spectrum.build(frame.select("sample_id", "student_ce", "response_tokens"),
                              spectrum.SpectrumConfig(epochs=5, warmup_epochs=1))
    for e, epoch in zip(manifest(out)["epochs"], expected):
        assert pl.read_parquet(out / e["shard"])["sample_id"].to_list() == epoch.sample_ids.to_list()
        assert math.isclose(e["temperature"], epoch.plan.temperature)


@pytest.mark.parametrize("method", list(SMALL))
def test_every_method_takes_an_on_policy_base_and_records_it_per_epoch(tmp_path, method):
    table = write(tmp_path, make_frame(40))
    off, _ = build_schedule(table.path, method, tmp_path / "off", SMALL[method])
    on, _ = build_schedule(table.path, method, tmp_path / "on", {**SMALL[method], "on_policy": "gkd"})
    off_epochs, on_epochs = manifest(off)["epochs"], manifest(on)["epochs"]
    assert all(set(e) == EPOCH_KEYS for e in off_epochs)  # an off-policy record is as it always was
    assert all(e["on_policy"] == "gkd" and e["on_policy_share"] == 0.5 for e in on_epochs)
    assert [e["num_samples"] for e in on_epochs] == [e["num_samples"] for e in off_epochs]  # same curriculum
    assert (manifest(on)["params"]["on_policy"], manifest(on)["params"]["on_policy_share"]) == ("gkd", 0.5)
    # GKD's loss where the method's loss is the base KD method's, no SFT term where the papers drop it
    loss = {"spectrum": "jsd", "srd": "jsd", "l2m": "skl", "dakd": "bdl", "full": "jsd", "random": "jsd"}[method]
    assert all(e["loss"] == loss for e in on_epochs)
    kd_weights = [1.0 if method in ("spectrum", "srd") else e["kd_weight"] for e in off_epochs]
    assert [e["kd_weight"] for e in on_epochs] == kd_weights
    assert all(e["loss_params"] == {"beta": 0.1} for e in on_epochs if loss == "jsd")
    given, _ = build_schedule(table.path, method, tmp_path / "given", {**SMALL[method], "on_policy": "gkd",
                                                                     "on_policy_share": 0.25, "loss": "rkl"})
    assert all(e["loss"] == "rkl" and e["on_policy_share"] == 0.25 for e in manifest(given)["epochs"])


def test_on_policy_parameters_are_checked(tmp_path):
    table = write(tmp_path, make_frame(40))
    with pytest.raises(ScheduleError, match="on_policy must be one of off, gkd, distillm, got 'gdk'"):
        build_schedule(table.path, "full", tmp_path / "a", {"on_policy": "gdk"})
    with pytest.raises(ScheduleError, match=r"on_policy_share must be a number in \[0, 1\], got 1.5"):
        build_schedule(table.path, "full", tmp_path / "b", {"on_policy": "gkd", "on_policy_share": 1.5})
    with pytest.raises(ScheduleError, match="on_policy_share 0.3 needs an on-policy mode"):
        build_schedule(table.path, "full", tmp_path / "c", {"on_policy_share": 0.3})
    with pytest.raises(ScheduleError, match="distillm draws its own share"):
        build_schedule(table.path, "full", tmp_path / "d", {"on_policy": "distillm", "on_policy_share": 0.5})
    distillm, _ = build_schedule(table.path, "srd", tmp_path / "distillm", {"epochs": 3, "on_policy": "distillm"})
    assert all((e["on_policy"], e["on_policy_share"], e["loss"], e["loss_params"], e["kd_weight"]) ==
               ("distillm", 0.0, "skl", {"skew": 0.1}, 1.0) for e in manifest(distillm)["epochs"])
    on, _ = build_schedule(table.path, "full", tmp_path / "on", {"epochs": 1, "on_policy": "gkd"})
    record = manifest(on)
    del record["epochs"][0]["on_policy_share"]  # half the pair: refused, naming the key
    (on / "manifest.json").write_text(json.dumps(record))
    from syllabus.core.schedule import read_schedule

    with pytest.raises(ScheduleError, match="epoch 1 lacks on_policy_share"):
        read_schedule(on)
