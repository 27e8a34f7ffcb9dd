"""`train run` end to end on tiny random Llamas: KD loss falls, stages restart, resume is exact, bad pairs refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import scored_table, short_rows
from syllabus.core.table import write_table
from syllabus.curate.schedules.build import build_schedule
from syllabus.train.cli import app
from syllabus.core.schedule import fingerprint_manifest

runner = CliRunner()
PREEMPT = str(Path(__file__).with_name("preempt.py"))


@pytest.fixture(scope="module")
def table(tmp_path_factory, dolly_rows, real_tokenizer_dir):
    """12 short Dolly rows with random scores, as a hand-made table: no scoring limit in its metadata."""
    rows = short_rows(dolly_rows, 12)
    scored = scored_table(tmp_path_factory.mktemp("scored"), rows, 256, real_tokenizer_dir)
    return write_table(scored.frame, tmp_path_factory.mktemp("train") / "table",
                       {"kind": "difficulty_table", "template": "alpaca"})


def schedule(table, tmp_path, method, **params):
    path, _ = build_schedule(table.path, method, tmp_path / f"sched-{method}", params)
    return path


def train_args(manifest, out, student, teacher, *extra):
    return ["run", "--manifest", str(manifest), "--out", str(out), "--student", str(student), "--teacher", str(teacher),
            "--micro-batch-size", "4", "--max-seq-len", "256", "--lr", "3e-3", "--precision", "fp32", *extra]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kd_loss_goes_down(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=6, loss="kld")
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    assert len(m) == 6 * 3  # 12 rows / micro-batch 4 = 3 steps per epoch
    assert np.mean([r["kd"] for r in m[-3:]]) < 0.9 * np.mean([r["kd"] for r in m[:3]])
    assert all(r["kd_weight"] == 1.0 and r["loss_name"] == "kld" for r in m)
    assert {"loss", "ce", "kd", "lr", "tokens_per_second", "epoch", "stage", "temperature", "kd_weight",
            "grad_norm"} <= set(m[0])
    final = out / "checkpoints" / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    record = json.loads((final / "syllabus_train.json").read_text())
    assert record["table_fingerprint"] == table.fingerprint and record["global_step"] == 18
    config = json.loads((out / "config.json").read_text())
    assert config["schedule"]["method"] == "full" and config["manifest_fingerprint"] == fingerprint_manifest(sched)


def test_the_manifest_fingerprint_is_stable_and_covers_every_shard(table, tmp_path):
    sched = schedule(table, tmp_path, "dakd", epochs=3)
    copy = tmp_path / "copy"
    shutil.copytree(sched, copy)
    assert fingerprint_manifest(copy) == fingerprint_manifest(sched)  # content, not location
    last = copy / "epoch-000.parquet"  # every usable row
    ids = pl.read_parquet(last)
    ids.reverse().write_parquet(last)  # same samples, another order: another curriculum
    assert fingerprint_manifest(copy) != fingerprint_manifest(sched)


def test_stage_restarts_and_stage_checkpoints(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "srd", epochs=3, keep_share=1.0, ce_column="student_ce")  # 3 stages x 1 epoch
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    stages = [r["stage"] for r in m]
    first_of_stage = [i for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    assert len(first_of_stage) == 3
    for i in first_of_stage:  # cosine schedule restarted: every stage starts at the peak rate
        assert m[i]["lr"] == pytest.approx(3e-3)
    assert all(m[i + 1]["lr"] < 3e-3 for i in first_of_stage if i + 1 < len(m) and stages[i + 1] == stages[i])
    assert [r["temperature"] for r in (m[i] for i in first_of_stage)] == [1.0, 1.5, 2.0]
    assert [round(m[i]["kd_weight"], 6) for i in first_of_stage] == [0.7, 0.8, 0.9]
    for name in ("stage-0", "stage-1", "stage-2", "final"):
        assert (out / "checkpoints" / name / "model.safetensors").exists(), name


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(table, tmp_path, real_tokenizer_dir, tiny_teacher):
    from helpers import tiny_llama

    # a student with dropout: resume must also restore the generator its masks come from
    tiny_model = tiny_llama(real_tokenizer_dir, tmp_path / "dropout-student", seed=3, dropout=0.1)
    sched = schedule(table, tmp_path, "l2m", stages=2, epochs_per_stage=2)
    args = train_args(sched, tmp_path / "ref", tiny_model, tiny_teacher, "--save-every-steps", "2")
    assert runner.invoke(app, args).exit_code == 0
    out = tmp_path / "killed"
    args = train_args(sched, out, tiny_model, tiny_teacher, "--save-every-steps", "2")
    cmd = [sys.executable, "-m", "syllabus.train", *args]
    killed = subprocess.run([sys.executable, PREEMPT, "train-step", "5", "syllabus.train", *args],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((out / "state" / "progress.json").read_text())["global_step"] == 4
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    # what pipeline stages pass: continue this run if OUT holds it (replace OUT only if it holds another run)
    resumed = subprocess.run([*cmd, "--resume", "--overwrite"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "ref" / "checkpoints" / "final" / "model.safetensors")
    b = load_file(out / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, len(steps) + 1))  # no step logged twice


@pytest.mark.slow
def test_dakd_dynamic_mode_rescores(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "dakd", epochs=3)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher))
    assert result.exit_code == 0, result.output
    rescores = [json.loads(line) for line in (out / "rescore.jsonl").read_text().splitlines()]
    manifest = json.loads((sched / "manifest.json").read_text())
    assert [r["epoch"] for r in rescores] == [1, 2]
    assert [r["selected"] for r in rescores] == [e["num_samples"] for e in manifest["epochs"][1:]]
    assert all(r["loss_name"] == "bdl" for r in metrics(out))


@pytest.mark.slow
def test_loss_override_for_ablations(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--loss", "skl", "--loss-param",
                                           "skew=0.2", "--kd-weight", "0.5"))
    assert result.exit_code == 0, result.output
    assert all(r["loss_name"] == "skl" and r["kd_weight"] == 0.5 for r in metrics(out))
    # an edited stage re-run by a pipeline: --resume --overwrite replaces a directory that holds another run
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--loss", "rkl", "--resume", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert [r["loss_name"] for r in metrics(out)] == ["rkl"] * 3
    assert json.loads((out / "config.json").read_text())["config"]["loss"] == "rkl"


def test_mismatched_table_is_refused(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=1)
    other = write_table(table.frame.head(6), tmp_path / "other", {"kind": "difficulty_table"})
    result = runner.invoke(app, train_args(sched, tmp_path / "run", tiny_model, tiny_teacher, "--table", str(other.path)))
    assert result.exit_code == 2 and "fingerprint" in result.output


def test_different_tokenizer_is_refused(table, tmp_path, tiny_model, real_tokenizer_dir):
    from transformers import AutoTokenizer

    from helpers import tiny_llama

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    tok.add_tokens(["<another_token>"])
    tok.save_pretrained(tmp_path / "tok")
    other = tiny_llama(tmp_path / "tok", tmp_path / "other", seed=5)
    sched = schedule(table, tmp_path, "full", epochs=1)
    result = runner.invoke(app, train_args(sched, tmp_path / "run", tiny_model, other))
    assert result.exit_code == 2 and "different tokenizers" in result.output


def test_unknown_yaml_setting_is_refused(table, tmp_path, tiny_model, tiny_teacher):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    sched = schedule(table, tmp_path, "full", epochs=1)
    result = runner.invoke(app, train_args(sched, tmp_path / "run", tiny_model, tiny_teacher, "--config", str(cfg)))
    assert result.exit_code == 2 and "unknown setting(s) learning_rate" in result.output


def test_the_best_checkpoint_is_swapped_in_whole_and_only_by_a_better_one(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from syllabus.core.io import WriteError
    from syllabus.train.checkpoints import keep_best

    run = SimpleNamespace(out=tmp_path)
    stages = []
    for k in (1, 2, 3):
        stages.append(tmp_path / "checkpoints" / f"stage-{k}")
        stages[-1].mkdir(parents=True)
        (stages[-1] / "config.json").write_text(str(k))
    best = tmp_path / "checkpoints" / "best"
    assert keep_best(run, stages[0], 1, 10.0) and (best / "config.json").read_text() == "1"
    assert not keep_best(run, stages[1], 2, 5.0) and (best / "config.json").read_text() == "1"
    os.replace(best, best.with_name("best.old"))  # killed between the two renames of a swap
    assert keep_best(run, stages[1], 2, 20.0) and (best / "config.json").read_text() == "2"
    assert json.loads((best.parent / "best.json").read_text()) == {"checkpoint": "stage-2", "stage": 2, "average": 20.0}

    def full_disk(src, dst):
        Path(dst).mkdir()
        (Path(dst) / "config.json").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", full_disk)
    with pytest.raises(WriteError, match="best checkpoint"):
        keep_best(run, stages[2], 3, 30.0)
    assert (best / "config.json").read_text() == "2"  # the best so far is whole, and the half copy is gone
    assert sorted(p.name for p in best.parent.iterdir()) == ["best", "best.json", "stage-1", "stage-2", "stage-3"]


@pytest.mark.slow
def test_stage_end_evaluation_keeps_the_best_checkpoint(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "srd", epochs=2, stages=2, keep_share=1.0, ce_column="student_ce")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval_sets: [dollyeval]\neval_limit: 2\n")
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--config", str(cfg)))
    assert result.exit_code == 0, result.output
    averages = {name: json.loads((out / "eval" / name / "summary.json").read_text())["results"]["average"]
                for name in ("stage-0", "stage-1")}
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["average"] == max(averages.values()) and (out / "checkpoints" / "best" / "model.safetensors").exists()
    for name in ("stage-0", "stage-1"):  # each stage's card shows its evaluation
        card = (out / "checkpoints" / name / "README.md").read_text()
        assert "| dollyeval | rouge_l |" in card and f"**{averages[name]:.2f}**" in card


def test_student_trains_with_its_dropout_unless_disabled(table, tmp_path, real_tokenizer_dir, tiny_teacher):
    from helpers import tiny_llama
    from syllabus.train.config import TrainConfig
    from syllabus.train.data import collate
    from syllabus.train.loop import setup
    from syllabus.train.losses import Objective

    student = tiny_llama(real_tokenizer_dir, tmp_path / "dropout-student", seed=3, dropout=0.5)
    sched = schedule(table, tmp_path, "full", epochs=1, loss="sft")
    sft = Objective("sft", temperature=1.0, kd_weight=0.0)

    def two_losses_and_eval(disable: bool) -> tuple[float, float, float]:
        run = setup(TrainConfig(manifest=str(sched), out=str(tmp_path / f"run-{disable}"), student=str(student),
                                teacher=str(tiny_teacher), max_seq_len=128, precision="fp32", disable_dropout=disable))
        batch = collate([run.store.encoded(s) for s in table.frame["sample_id"][:4]], run.tokenizer.pad_token_id)
        assert run.student.model.training  # from_pretrained returns eval mode; the trainer must switch
        with torch.no_grad():
            a, b = (run.student(batch, sft, None, None).loss_sum.item() for _ in range(2))
            run.student.eval()
            deterministic = run.student(batch, sft, None, None).loss_sum.item()
        return a, b, deterministic

    a, b, deterministic = two_losses_and_eval(disable=False)
    assert a != b and deterministic not in (a, b)  # attention dropout 0.5 is on while training
    a, b, deterministic = two_losses_and_eval(disable=True)
    assert a == b == pytest.approx(deterministic, rel=1e-6)


def test_training_takes_the_tables_length_limit_and_refuses_a_smaller_one(tmp_path, dolly_rows, real_tokenizer_dir,
                                                                          tiny_model, tiny_teacher):
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import setup

    rows = sorted(dolly_rows[:60], key=lambda r: len(r["prompt"]) + len(r["output"]))[-8:]  # the longest rows
    table = scored_table(tmp_path, rows, 1024, real_tokenizer_dir)
    lengths = (table.frame["prompt_tokens"] + table.frame["response_tokens"]).to_list()
    assert table.frame["status"].to_list() == ["ok"] * 8 and max(lengths) > 256
    sched = schedule(table, tmp_path, "full", epochs=1)

    def config(name, **extra):
        return TrainConfig(manifest=str(sched), out=str(tmp_path / name), student=str(tiny_model),
                           teacher=str(tiny_teacher), precision="fp32", **extra)

    run = setup(config("default"))  # no --max-seq-len: the table's 1,024, so every row is trained whole
    assert run.store.limit.max_seq_len == 1024
    longest = table.frame["sample_id"][lengths.index(max(lengths))]
    encoded = run.store.encoded(longest)
    assert len(encoded.ids) == max(lengths) and not encoded.truncated
    result = runner.invoke(app, train_args(sched, tmp_path / "short", tiny_model, tiny_teacher))  # --max-seq-len 256
    assert result.exit_code == 2
    too_long = sum(n > 256 for n in lengths)
    assert too_long and f"--max-seq-len 256: {too_long} row(s)" in result.output and longest in result.output


def test_training_rows_must_tokenise_as_the_table_scored_them(tmp_path, dolly_rows, real_tokenizer_dir, tiny_model,
                                                              tiny_teacher):
    from syllabus.train.config import TrainConfig
    from syllabus.train.data import DataError
    from syllabus.train.loop import setup

    table = scored_table(tmp_path, dolly_rows[:6], 1024, real_tokenizer_dir)
    frame = table.frame.with_columns(prompt_tokens=pl.col("prompt_tokens") + 1)  # as if another template scored it
    other = write_table(frame, tmp_path / "other", table.metadata)
    sched = schedule(other, tmp_path, "full", epochs=1)
    run = setup(TrainConfig(manifest=str(sched), out=str(tmp_path / "run"), student=str(tiny_model),
                            teacher=str(tiny_teacher), precision="fp32"))
    with pytest.raises(DataError, match="tokenizer, template or length limit differs"):
        run.store.encoded(frame["sample_id"][0])


def test_dakd_rescoring_selects_from_the_schedules_usable_rows(tmp_path, dolly_rows, real_tokenizer_dir, tiny_model,
                                                               tiny_teacher):
    rows = short_rows(dolly_rows, 12)
    table = scored_table(tmp_path, rows, 1024, real_tokenizer_dir)
    # one row with a NaN teacher CE (NaN > 0 is true in polars) and one without a student CE: the schedule drops both
    frame = table.frame.with_columns(
        teacher_ce=pl.when(pl.int_range(pl.len()) == 0).then(float("nan")).otherwise(pl.col("teacher_ce")),
        student_ce=pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("student_ce")),
    ).with_columns(dds=pl.col("student_ce") / pl.col("teacher_ce"))
    table = write_table(frame, tmp_path / "holes", table.metadata)
    sched = schedule(table, tmp_path, "dakd", epochs=2)
    first_epoch = pl.read_parquet(sched / "epoch-000.parquet")["sample_id"]
    assert first_epoch.len() == 10
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--manifest", str(sched), "--out", str(out), "--student", str(tiny_model),
                                 "--teacher", str(tiny_teacher), "--micro-batch-size", "4", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    rescored = [json.loads(line) for line in (out / "rescore.jsonl").read_text().splitlines()]
    assert [r["pool"] for r in rescored] == [10] and np.isfinite(rescored[0]["mean_dds"])


class _Planted:
    """A pickle that runs code when loaded: what a tampered run directory could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_unpickles_code_from_the_run_directory(table, tmp_path, tiny_model, tiny_teacher):
    import torch

    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "run"
    args = train_args(sched, out, tiny_model, tiny_teacher, "--max-steps", "1")
    assert runner.invoke(app, args).exit_code == 0
    snapshot = out / "state" / "optimizer.pt"
    saved = torch.load(snapshot, weights_only=True)  # what train run writes reads back as plain values
    marker = tmp_path / "code-ran"
    torch.save({**saved, "planted": _Planted(marker)}, snapshot)
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--resume"))
    assert not marker.exists()
    assert result.exit_code == 2 and "not a snapshot of plain values" in result.output


def test_a_bad_stage_end_evaluation_set_fails_before_training(table, tmp_path, tiny_model, tiny_teacher):
    bad = tmp_path / "myset.jsonl"
    bad.write_text('{"prompt": "Say hi", "output": "hi"}\n["not", "an", "object"]\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"eval_sets: [{bad}]\n")
    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--config", str(cfg)))
    assert result.exit_code == 2 and f"{bad}:2" in result.output
    assert not (out / "metrics.jsonl").exists()


def test_resume_drops_a_metrics_line_cut_short_by_a_crash(tmp_path):
    from syllabus.train.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    log = MetricsLog(path, resume_step=2)
    log.write({"step": 3, "loss": 0.5}, main_process=True)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_overwrite_never_deletes_a_directory_that_is_not_a_training_run(table, tmp_path, tiny_model, tiny_teacher):
    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--overwrite"))
    assert result.exit_code == 2 and "notes.txt" in result.output
    assert (out / "notes.txt").read_text() == "mine"


def test_training_packs_micro_batches_unless_asked_for_padded_ones(table, tmp_path, tiny_model, tiny_teacher):
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import setup

    sched = schedule(table, tmp_path, "full", epochs=1)
    for padding_free, expected in ((True, 512), (False, None)):
        run = setup(TrainConfig(manifest=str(sched), out=str(tmp_path / f"run-{padding_free}"), student=str(tiny_model),
                                teacher=str(tiny_teacher), max_seq_len=256, precision="fp32",
                                padding_free=padding_free))
        assert run.pack_tokens == expected
    result = runner.invoke(app, train_args(sched, tmp_path / "padded", tiny_model, tiny_teacher, "--padded",
                                           "--max-steps", "1"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "padded" / "config.json").read_text())["config"]["padding_free"] is False


def test_the_trainers_adamw_makes_torchs_reference_update():
    import torch

    from syllabus.train.loop import adamw

    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    ours = [w.clone().requires_grad_() for w in weights]
    reference = [w.clone().requires_grad_() for w in weights]
    fast = adamw(ours, lr=1e-2, weight_decay=0.01)
    slow = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.01, foreach=False)  # the textbook loop
    assert fast.defaults["fused"]
    for step in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, optimizer in ((ours, fast), (reference, slow)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_full_disk_names_the_snapshot_and_keeps_the_last_one(table, tmp_path, tiny_model, tiny_teacher,
                                                               monkeypatch):
    """A write that fails mid-snapshot (torch reports a full disk as a RuntimeError) stops the run with a message
    naming the snapshot and what to do; the previous snapshot stays whole and the run resumes from it."""
    import safetensors.torch

    sched = schedule(table, tmp_path, "full", epochs=2, loss="kld")
    out = tmp_path / "run"
    real_save, calls = safetensors.torch.save_file, []

    def fails_the_second_time(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fails_the_second_time)
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--save-every-steps", "2"))
    assert result.exit_code == 2  # an error message, not a traceback
    assert "cannot write the training snapshot" in result.output and "run the same command again" in result.output
    assert not (out / "state.tmp").exists()  # the partial snapshot is removed, its space given back
    assert json.loads((out / "state" / "progress.json").read_text())["global_step"] == 2
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    again = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--save-every-steps", "2", "--resume"))
    assert again.exit_code == 0, again.output
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))


def test_report_to_tensorboard_logs_every_steps_metrics(table, tmp_path, tiny_model, tiny_teacher):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sched = schedule(table, tmp_path, "full", epochs=2)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--report-to", "tensorboard"))
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "trackers" / "syllabus"))
    events.Reload()
    logged = {key: [(e.step, e.value) for e in events.Scalars(key)] for key in ("loss", "kd", "lr", "grad_norm")}
    for key, series in logged.items():  # the same numbers as metrics.jsonl, step by step (float32 in the file)
        assert series == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in metrics(out)], key
    config = json.loads((out / "config.json").read_text())
    assert "report_to" not in config["config"]  # where it is logged is not what a step computes: resume may change it


def test_a_tracker_that_is_not_installed_is_refused_before_training(table, tmp_path, tiny_model, tiny_teacher,
                                                                    monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # as on a machine without wandb
    result = runner.invoke(app, train_args(schedule(table, tmp_path, "full", epochs=1), tmp_path / "run", tiny_model,
                                           tiny_teacher, "--report-to", "wandb"))
    assert result.exit_code == 2 and "pip install wandb" in result.output and not (tmp_path / "run").exists()


def test_tables_and_checkpoints_carry_hugging_face_cards(table, tmp_path, tiny_model, tiny_teacher):
    from huggingface_hub import DatasetCard, ModelCard

    card = DatasetCard.load(table.path / "README.md")  # parsed as the hub parses it
    assert "difficulty-scores" in card.data.tags
    assert f"| ok | {table.frame.height} |" in card.text and "## Difficulty: DDS" in card.text
    sched = schedule(table, tmp_path, "l2m", stages=2, epochs_per_stage=1)
    out = tmp_path / "run"
    assert runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher)).exit_code == 0
    for name in ("stage-0", "final"):
        card = ModelCard.load(out / "checkpoints" / name / "README.md")
        assert card.data.library_name == "transformers" and "curriculum-l2m" in card.data.tags
        assert f"`{tiny_model}`" in card.text and f"`{tiny_teacher}`" in card.text  # student and teacher named
        assert "schedule: `l2m`, 2 epoch(s); loss(es) skl" in card.text and table.fingerprint[:16] in card.text
        assert "Not evaluated with this card" in card.text
        # the card names the checkpoint where it ended up, not the temporary directory it was written in
        assert f"# run: `{name}`" in card.text and ".tmp" not in card.text
        assert f"evaluate run --model {out / 'checkpoints' / name} " in card.text
        assert f"huggingface-cli upload USER/NAME {out / 'checkpoints' / name}`" in card.text
        assert str(table.path) not in card.text and f"table `{table.path.name}`" in card.text  # no local path


def test_a_card_names_the_embedded_default_by_the_hub_model_it_comes_from():
    from huggingface_hub import ModelCard

    from syllabus.core.cards import EMBEDDED_BASE, model_card

    facts = {"student": {"name": "default", "path": "/cache/smollm2-135m-instruct-keep2"},
             "teacher": {"name": "default", "path": "/cache/smollm2-135m-instruct"}, "method": "full"}
    card = ModelCard(model_card(Path("runs/x/checkpoints/final"), facts))
    assert card.data.base_model == EMBEDDED_BASE == "HuggingFaceTB/SmolLM2-135M-Instruct"
    student_line = next(line for line in card.text.splitlines() if line.startswith("- student"))
    teacher_line = next(line for line in card.text.splitlines() if line.startswith("- teacher"))
    assert "depth-pruned" in student_line and "depth-pruned" not in teacher_line
    assert "(base model): `default`" not in card.text and "- teacher: `default`" not in card.text


@pytest.mark.slow
def test_a_lora_student_trains_its_adapters_only_and_its_merged_checkpoint_is_base_plus_adapter(
        table, tmp_path, tiny_model, tiny_teacher):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sched = schedule(table, tmp_path, "dakd", epochs=4)  # DA-KD re-scores with the adapted student, too
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(sched, out, tiny_model, tiny_teacher, "--lora",
                                           "r=4,alpha=8,dropout=0,target=q_proj+v_proj"))
    assert result.exit_code == 0, result.output
    m = metrics(out)
    assert np.mean([r["kd"] for r in m[-2:]]) < np.mean([r["kd"] for r in m[:2]])  # the loss falls
    assert [json.loads(line)["epoch"] for line in (out / "rescore.jsonl").read_text().splitlines()] == [1, 2, 3]
    final = out / "checkpoints" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    base, merged = load_file(tiny_model / "model.safetensors"), load_file(final / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed)  # nothing but the targets moved
    ids = torch.tensor([list(range(5, 45))])
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(final).eval()(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), final / "adapter")
        torch.testing.assert_close(logits, adapted.eval()(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    lora = ["--lora", "r=4,alpha=8,dropout=0,target=q_proj+v_proj"]
    stopped = tmp_path / "stopped"  # stopped after 3 steps, then resumed: the same adapter and merged model
    assert runner.invoke(app, train_args(sched, stopped, tiny_model, tiny_teacher, *lora, "--max-steps", "3",
                                         "--save-every-steps", "2")).exit_code == 0
    assert runner.invoke(app, train_args(sched, stopped, tiny_model, tiny_teacher, *lora, "--resume")).exit_code == 0
    resumed = load_file(stopped / "checkpoints" / "final" / "model.safetensors")
    assert all(torch.equal(resumed[k], merged[k]) for k in merged)
    bad = runner.invoke(app, train_args(sched, tmp_path / "bad", tiny_model, tiny_teacher, "--lora", "rank=4"))
    assert bad.exit_code == 2 and "'rank=4' is not one of r=INT" in bad.output


def test_an_adapter_directory_stands_for_its_merged_model(tmp_path, tiny_model):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from syllabus.core.models import resolve_model

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))  # not a no-op
    model.save_pretrained(tmp_path / "mine")
    ref = resolve_model(str(tmp_path / "mine"), "student")  # an adapter alone: merged into its base, once
    assert (ref.path / "config.json").exists() and (ref.path / "tokenizer.json").exists()
    ids = torch.tensor([list(range(5, 30))])
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(ref.path)(input_ids=ids).logits,
                                   model.eval()(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert resolve_model(str(tmp_path / "mine"), "student").path == ref.path  # the cached merge is reused
    checkpoint = tmp_path / "run" / "checkpoints" / "final"  # `train run --lora`: the merged model is beside it
    (checkpoint / "adapter").mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "adapter" / "adapter_config.json").write_text("{}")
    assert resolve_model(str(checkpoint / "adapter"), "student").path == checkpoint.resolve()


@pytest.mark.slow
def test_a_run_directory_is_trained_into_by_one_process_at_a_time(table, tmp_path, tiny_model, tiny_teacher):
    from syllabus.core.workdir import foreign_entries
    from syllabus.train.run import RUN_NAMES

    sched = schedule(table, tmp_path, "full", epochs=2)
    out, gate = tmp_path / "run", tmp_path / "gate"
    args = train_args(sched, out, tiny_model, tiny_teacher)
    first = subprocess.Popen([sys.executable, PREEMPT, "train-pause", "1", "syllabus.train", *args],
                             env={**os.environ, "PREEMPT_GATE": str(gate)}, stderr=subprocess.PIPE, text=True)
    try:
        paused = tmp_path / "gate.paused-0"
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.1)
        for extra in ([], ["--resume"], ["--overwrite"]):  # the same run, resumed or started over: refused alike
            second = runner.invoke(app, [*args, *extra])
            assert second.exit_code == 2 and f"pid {first.pid}" in second.output, second.output
        gate.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        first.kill()
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))  # 12 rows / 4 = 3 steps an epoch, each once
    assert foreign_entries(out, RUN_NAMES) == []  # RUN_NAMES covers all a run writes: --overwrite may delete it
    (out / "notes.md").write_text("mine")  # something of the user's beside the run
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2 and "also holds notes.md: nothing was deleted" in " ".join(result.output.split())
    assert (out / "checkpoints" / "final" / "model.safetensors").exists()
    (out / "notes.md").unlink()
    assert runner.invoke(app, [*args, "--overwrite", "--max-steps", "1"]).exit_code == 0
    assert [r["step"] for r in metrics(out)] == [1]


def test_the_default_precision_is_the_machines_and_the_run_records_the_resolved_one(table, tmp_path, tiny_model,
                                                                                    tiny_teacher, monkeypatch):
    from syllabus.core import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: False)  # a CPU that would emulate bf16
    precision._warn_no_bf16.cache_clear()
    sched = schedule(table, tmp_path, "full", epochs=1)
    out = tmp_path / "run"
    args = [a for a in train_args(sched, out, tiny_model, tiny_teacher, "--max-steps", "1") if a not in ("--precision",
                                                                                                          "fp32")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["config"]["precision"] == "fp32"
    precision._warn_no_bf16.cache_clear()
