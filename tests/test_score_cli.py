"""`curate score`, `merge` and `inspect` end to end through the CLI, with the transformers engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers import weights_digest
from syllabus.core.precision import resolve_dtype
from syllabus.core.table import read_table
from syllabus.curate.cli import app

runner = CliRunner()


def score_args(data, out, student, teacher, *extra):
    return [
        "score", str(data), "--out", str(out), "--student", str(student), "--teacher", str(teacher),
        "--gen-engine", "hf", "--ce-engine", "hf", "--max-new-tokens", "8", "--part-size", "4",
        "--max-seq-len", "512", "--quiet", *extra,
    ]


def invoke(args):
    result = runner.invoke(app, args)
    return result


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model, tiny_teacher, dolly_rows):
    root = tmp_path_factory.mktemp("scored")
    data = root / "dolly12.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dolly_rows[:12]))
    out = root / "table"
    result = invoke(score_args(data, out, tiny_model, tiny_teacher))
    assert result.exit_code == 0, result.output
    return data, out, result.output


def test_score_writes_a_complete_table(scored, tiny_model, tiny_teacher):
    data, out, output = scored
    table = read_table(out)
    frame = table.frame
    assert frame.height == 12 and (frame["status"] == "ok").all()
    for col in ("sample_id", "prompt", "response", "prompt_tokens", "response_tokens", "student_ce", "teacher_ce",
                "dds", "student_output", "rouge_l", "output_ce", "status"):
        assert col in frame.columns
    assert (frame["dds"] - frame["student_ce"] / frame["teacher_ce"]).abs().max() < 1e-12
    assert frame["rouge_l"].is_between(0, 1).all()
    assert frame["student_ce"].min() > 0 and frame["output_ce"].min() >= 0
    meta = table.metadata
    assert meta["student"]["path"] == str(tiny_model) and meta["teacher"]["path"] == str(tiny_teacher)
    assert meta["student"]["weights_sha256"] == weights_digest(tiny_model) and meta["template"] == "alpaca"
    assert meta["teacher"]["weights_sha256"] == weights_digest(tiny_teacher)
    assert meta["engines"]["generation"] == "hf" and meta["generation"]["temperature"] == 0.01
    assert meta["engines"]["dtype"] == resolve_dtype("auto") != "auto"  # the format it ran in, not the setting
    assert "student_ce" in output and "status: ok=12" in output  # the end-of-run summary
    sidecar = json.loads((out / "metadata.json").read_text())
    parquet_meta = json.loads(pq.read_schema(next(out.glob("part-*.parquet"))).metadata[b"syllabus"])
    assert sidecar["table_fingerprint"] == parquet_meta["table_fingerprint"] == table.fingerprint


def test_inspect_prints_the_summary(scored):
    _, out, _ = scored
    result = invoke(["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "rows: 12" in result.output and "teacher_ce" in result.output and "p50" in result.output


def test_too_long_rows_are_kept_without_scores(tmp_path, small_dolly, tiny_model):
    out = tmp_path / "t"
    result = invoke(score_args(small_dolly, out, tiny_model, tiny_model, "--max-seq-len", "96"))
    assert result.exit_code == 0, result.output
    frame = read_table(out).frame
    long = frame.filter(pl.col("status") == "too_long")
    assert 0 < long.height < frame.height
    assert (long["prompt_tokens"] + long["response_tokens"] > 96).all()
    assert long["student_ce"].is_null().all() and long["dds"].is_null().all()
    ok = frame.filter(pl.col("status") == "ok")
    assert ok["student_ce"].is_not_null().all()
    # same model as student and teacher: dds is exactly 1
    assert (ok["dds"] - 1.0).abs().max() < 1e-12


def test_other_arguments_into_the_same_directory_are_refused(scored, tiny_model, tiny_teacher):
    data, out, _ = scored
    before = read_table(out).fingerprint
    result = invoke(score_args(data, out, tiny_model, tiny_teacher, "--max-new-tokens", "9"))
    assert result.exit_code == 2
    assert "different scoring run" in result.output and "generation.max_new_tokens" in result.output
    assert read_table(out).fingerprint == before
    again = invoke(score_args(data, out, tiny_model, tiny_teacher))  # same arguments: a no-op resume
    assert again.exit_code == 0 and read_table(out).fingerprint == before


@pytest.mark.slow
def test_overwrite_replaces_a_different_run(tmp_path, small_dolly, tiny_model, tiny_teacher):
    out = tmp_path / "t"
    assert invoke(score_args(small_dolly, out, tiny_model, tiny_teacher, "--limit", "3")).exit_code == 0
    result = invoke(score_args(small_dolly, out, tiny_model, tiny_teacher, "--limit", "5", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert read_table(out).frame.height == 5


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, small_dolly, tiny_model, tiny_teacher, scored):
    """Kill -9 after the first part, start again with the same arguments: same table as a run never killed."""
    _, uninterrupted, _ = scored
    out = tmp_path / "t"
    args = score_args(small_dolly, out, tiny_model, tiny_teacher)
    cmd = [sys.executable, "-m", "syllabus.curate", *args]
    preempt = str(Path(__file__).with_name("preempt.py"))
    killed = subprocess.run([sys.executable, preempt, "score-part", "1", "syllabus.curate", *args],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert not (out / "metadata.json").exists()
    assert len(list((out / "_work" / "student-gen").glob("part-*.parquet"))) == 1
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert read_table(out).frame.drop("source_file").equals(read_table(uninterrupted).frame.drop("source_file"))


@pytest.mark.slow
def test_the_slurm_job_array_scores_shards_that_merge_into_the_full_table(tmp_path, scored, tiny_model, tiny_teacher):
    """examples/slurm run as Slurm runs it: each array task with its SLURM_ARRAY_* variables, then the merge job."""
    data, full, _ = scored
    slurm = Path(__file__).resolve().parents[1] / "examples" / "slurm"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_ARRAY_TASK_COUNT": "2"}
    options = score_args(data, "-", tiny_model, tiny_teacher)[4:]  # what follows DATA and --out OUT
    run = tmp_path / "run"
    for i in range(2):
        task = subprocess.run(["bash", str(slurm / "score-shards.sbatch"), str(data), str(run), *options],
                              env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, capture_output=True, text=True)
        assert task.returncode == 0, task.stderr
    sizes = [read_table(run / f"shard-{i}").frame.height for i in range(2)]
    assert sum(sizes) == 12 and min(sizes) > 0
    merge = subprocess.run(["bash", str(slurm / "merge.sbatch"), str(run)], env=env, capture_output=True, text=True)
    assert merge.returncode == 0, merge.stderr
    merged = read_table(run / "table").frame
    reference = read_table(full).frame
    assert merged["sample_id"].to_list() == reference["sample_id"].to_list()  # input order restored
    for col in ("student_ce", "teacher_ce"):  # teacher forcing does not depend on the batch beyond bf16 noise
        assert (merged[col] - reference[col]).abs().max() < 0.05


def test_merge_refuses_shards_that_do_not_belong_together(tmp_path, scored, tiny_model, tiny_teacher):
    data, full, _ = scored
    a = tmp_path / "a"
    assert invoke(score_args(data, a, tiny_model, tiny_teacher, "--num-shards", "2", "--shard-index", "0")).exit_code == 0
    twice = invoke(["merge", str(a), str(a), "--out", str(tmp_path / "m1")])
    assert twice.exit_code == 2 and "missing [1]" in twice.output and "repeated [0]" in twice.output
    other = invoke(["merge", str(a), str(full), "--out", str(tmp_path / "m2")])
    assert other.exit_code == 2
    assert "not shards of one run" in other.output or "other settings" in other.output


def test_teacher_from_reuses_teacher_scores(tmp_path, scored, tiny_model):
    data, full, _ = scored
    out = tmp_path / "t"
    result = invoke(["score", str(data), "--out", str(out), "--student", str(tiny_model), "--teacher-from", str(full),
                     "--gen-engine", "hf", "--ce-engine", "hf", "--max-new-tokens", "8", "--part-size", "4",
                     "--max-seq-len", "512", "--quiet"])
    assert result.exit_code == 0, result.output
    reused, reference = read_table(out), read_table(full)
    assert reused.frame["teacher_ce"].to_list() == reference.frame["teacher_ce"].to_list()
    assert reused.metadata["teacher_from"]["table_fingerprint"] == reference.fingerprint
    assert not (out / "_work" / "teacher-ce").exists()  # no teacher pass ran


def test_different_tokenizers_are_refused(tmp_path, small_dolly, tiny_model, real_tokenizer_dir):
    from transformers import AutoTokenizer

    from helpers import tiny_llama

    tok_dir = tmp_path / "tok"
    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    tok.add_tokens(["<extra_token_for_test>"])
    tok.save_pretrained(tok_dir)
    other = tiny_llama(tok_dir, tmp_path / "other", seed=2)
    result = invoke(score_args(small_dolly, tmp_path / "t", tiny_model, other))
    assert result.exit_code == 2 and "different tokenizers" in result.output


def test_unreachable_hub_id_fails_with_a_clear_message(tmp_path, small_dolly, tiny_model):
    result = invoke(score_args(small_dolly, tmp_path / "t", "no-such-org/no-such-model", tiny_model))
    assert result.exit_code == 2
    assert "could not be fetched from the Hugging Face hub" in result.output and "Traceback" not in result.output


def test_default_models_must_be_prepared_first(tmp_path, small_dolly):
    result = invoke(["score", str(small_dolly), "--out", str(tmp_path / "t"), "--quiet"])
    assert result.exit_code == 2 and "curate models prepare" in result.output


def test_rejected_rows_are_written_and_do_not_stop_the_run(tmp_path, dolly_rows, tiny_model):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(dolly_rows[0]) + "\n{not json\n" + json.dumps({**dolly_rows[1], "output": ""}) + "\n")
    out = tmp_path / "t"
    result = invoke(score_args(data, out, tiny_model, tiny_model))
    assert result.exit_code == 0, result.output
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, None), (3, "output")]
    assert read_table(out).frame.height == 1 and "rejected input rows: 2" in result.output


def test_teacher_only_table_then_student_reuses_it(tmp_path, small_dolly, tiny_model, tiny_teacher):
    """Score the teacher once (--student none), then any number of students against it."""
    teacher_table = tmp_path / "teacher"
    result = invoke(["score", str(small_dolly), "--out", str(teacher_table), "--student", "none", "--teacher",
                     str(tiny_teacher), "--ce-engine", "hf", "--max-seq-len", "512", "--part-size", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    t = read_table(teacher_table)
    assert t.frame["teacher_ce"].is_not_null().all() and t.frame["student_ce"].is_null().all()
    assert t.metadata["student"] is None
    assert not (teacher_table / "_work" / "student-gen").exists()
    out = tmp_path / "student"
    result = invoke(["score", str(small_dolly), "--out", str(out), "--student", str(tiny_model), "--teacher-from",
                     str(teacher_table), "--gen-engine", "hf", "--ce-engine", "hf", "--max-new-tokens", "4",
                     "--max-seq-len", "512", "--part-size", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    frame = read_table(out).frame
    assert frame["teacher_ce"].to_list() == t.frame["teacher_ce"].to_list() and frame["dds"].is_not_null().all()


def test_a_row_with_an_empty_prompt_is_rejected_not_scored(tmp_path, tiny_model):
    """Scored, it would predict its first response token from position -1 (hf) or kill the engine (vLLM)."""
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Say hi.", "output": "Hi!"}, {"prompt": "", "output": "Hello."}, {"prompt": "  ", "output": "Hey."},
    ]))
    out = tmp_path / "t"
    result = invoke(score_args(data, out, tiny_model, tiny_model, "--template", "none"))
    assert result.exit_code == 0, result.output
    frame = read_table(out).frame
    assert frame.height == 1 and frame["prompt_tokens"].min() > 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, "prompt"), (3, "prompt")]


def test_a_max_seq_len_past_the_model_context_is_refused_before_any_work(tmp_path, small_dolly, tiny_model):
    out = tmp_path / "t"
    result = invoke(score_args(small_dolly, out, tiny_model, tiny_model, "--max-seq-len", "4096"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--max-seq-len 4096 + --max-new-tokens 8 = 4104 tokens" in result.output
    assert "context is 2048 tokens" in result.output and "--max-seq-len 2040 or less" in result.output
    assert not out.exists()


@pytest.mark.parametrize(("config", "context"), [
    ({"max_position_embeddings": 4096}, 4096),
    ({"n_positions": 1024}, 1024),  # GPT-2
    ({"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, 8192),
    ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 131072),
    ({"text_config": {"max_position_embeddings": 8192}}, 8192),
    ({"hidden_size": 64}, None),  # unstated: not checked
])
def test_model_context_reads_config_json_as_vllm_does(tmp_path, config, context):
    from syllabus.core.models import ModelRef
    from syllabus.curate.score import model_context

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_context(ModelRef("m", tmp_path)) == context


def test_a_field_named_by_flag_that_the_data_lacks_is_an_error(tmp_path, small_dolly, tiny_model):
    result = invoke(score_args(small_dolly, tmp_path / "t", tiny_model, tiny_model, "--input-field", "contxt"))
    assert result.exit_code == 2 and "no row has the field 'contxt' (--input-field)" in result.output
    assert "'instruction', 'prompt', 'input', 'output'" in result.output and not (tmp_path / "t").exists()


def test_no_row_fitting_max_seq_len_is_a_clear_error(tmp_path, small_dolly, tiny_model):
    result = invoke(score_args(small_dolly, tmp_path / "t", tiny_model, tiny_model, "--max-seq-len", "8"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "no row fits --max-seq-len 8" in result.output and "--truncate" in result.output


def test_an_out_that_holds_an_input_is_refused_before_anything_is_deleted(tmp_path, small_dolly, tiny_model):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = data_dir / "d.jsonl"
    data.write_bytes(small_dolly.read_bytes())
    for out in (data_dir, tmp_path):  # the input directory itself, and a directory around it
        result = invoke(score_args(data_dir, out, tiny_model, tiny_model, "--overwrite"))
        assert result.exit_code == 2 and "lies in --out" in result.output, result.output
        assert data.read_bytes() == small_dolly.read_bytes()
    model_copy = tmp_path / "models" / "student"
    shutil.copytree(tiny_model, model_copy)
    result = invoke(score_args(small_dolly, tmp_path / "models", model_copy, tiny_model, "--overwrite"))
    assert result.exit_code == 2 and "the student" in result.output and (model_copy / "config.json").exists()
    inside = invoke(score_args(data_dir, data_dir / "table", tiny_model, tiny_model))  # parts would become input
    assert inside.exit_code == 2 and "inside the input directory" in inside.output, inside.output
    assert not (data_dir / "table").exists()


def test_a_part_that_does_not_read_back_is_computed_again(tmp_path, small_dolly, tiny_model, tiny_teacher, scored):
    _, reference, _ = scored
    out = tmp_path / "t"
    args = score_args(small_dolly, out, tiny_model, tiny_teacher)
    assert invoke(args).exit_code == 0
    (out / "metadata.json").unlink()  # an unfinished run, with one of its parts cut short
    part = out / "_work" / "student-ce" / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:100])
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "student-ce: 1 part(s)" in result.output and "part-00001.parquet" in result.output
    assert read_table(out).frame.drop("source_file").equals(read_table(reference).frame.drop("source_file"))


def test_padding_free_ce_pass_gives_the_padded_tables_scores(tmp_path, scored, tiny_model, tiny_teacher):
    data, padded, _ = scored  # scored padded: the default on CPU (sdpa attention)
    out = tmp_path / "packed"
    result = invoke(score_args(data, out, tiny_model, tiny_teacher, "--dtype", "float32", "--padding-free",
                               "--pack-tokens", "300"))
    assert result.exit_code == 0, result.output
    reference = tmp_path / "padded32"
    result = invoke(score_args(data, reference, tiny_model, tiny_teacher, "--dtype", "float32", "--padded"))
    assert result.exit_code == 0, result.output
    packed, want = read_table(out).frame, read_table(reference).frame
    for column in ("student_ce", "teacher_ce"):
        assert (packed[column] - want[column]).abs().max() < 1e-5
    assert read_table(out).metadata["config"]["padding_free"] is True
