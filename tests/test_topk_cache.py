"""The teacher's top-K cache: written by `curate score --teacher-topk K` (resumed, sharded, merged, reused with
--teacher-from), read by `train run --teacher cached`, and refused where it cannot stand in for the teacher."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from syllabus.core.engines.base import ScoringRequest
from syllabus.core.engines.hf_engine import HFEngine
from syllabus.core.table import read_table, table_fingerprint
from syllabus.core.tokens import encode_pair
from syllabus.core.topk_cache import CACHE_DIR, CACHE_FILE, TopKCache
from syllabus.curate.cli import app as curate_app
from syllabus.train.cli import app as train_app

runner = CliRunner()
K = 4


def score(data, out, student, teacher, *extra):
    args = ["score", str(data), "--out", str(out), "--student", str(student), "--gen-engine", "hf",
            "--ce-engine", "hf", "--max-new-tokens", "8", "--part-size", "4", "--max-seq-len", "512", "--quiet",
            *(["--teacher", str(teacher)] if teacher else []), *extra]
    return args


def invoke(app, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory, dolly_rows) -> Path:
    path = tmp_path_factory.mktemp("data") / "dolly12.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dolly_rows[:12]))
    return path


@pytest.fixture(scope="module")
def cached(tmp_path_factory, data, tiny_model, tiny_teacher) -> Path:
    """A full table with a top-4 cache, scored in fp32 (so that the reference below is bit for bit)."""
    out = tmp_path_factory.mktemp("cached") / "table"
    invoke(curate_app, score(data, out, tiny_model, tiny_teacher, "--teacher-topk", str(K), "--dtype", "float32"))
    return out


@pytest.fixture(scope="module")
def teacher_only(tmp_path_factory, data, tiny_teacher) -> Path:
    out = tmp_path_factory.mktemp("teacher-only") / "table"
    invoke(curate_app, score(data, out, "none", tiny_teacher, "--teacher-topk", str(K)))
    return out


def requests_of(table, tokenizer_dir) -> list[ScoringRequest]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoded = [encode_pair(tok, p, r, 512) for p, r in zip(table.frame["prompt"], table.frame["response"])]
    return [ScoringRequest(e.ids, len(e.prompt_ids)) for e in encoded]


def test_cache_holds_the_teachers_top_k_of_every_response_token(cached, tiny_teacher):
    table = read_table(cached)
    cache = TopKCache(cached / CACHE_DIR)
    ids = table.frame["sample_id"].to_list()
    requests = requests_of(table, tiny_teacher)
    engine = HFEngine(str(tiny_teacher), dtype="float32")
    reference = []
    for start in range(0, len(requests), 4):  # the scoring parts, batched as scoring batched them
        reference += engine.response_scores(requests[start:start + 4], K)[1]
    for sid, request, got, want in zip(ids, requests, cache.bins(ids), reference):
        assert got.ids.shape == (len(request.ids) - request.prompt_len, K) and got.ids.dtype == torch.int32
        for a, b in zip(got, want):
            assert torch.equal(a, b), sid
        # the K log-probs and the tail are one distribution
        total = torch.logsumexp(torch.cat([got.log_probs, got.log_tail[:, None]], 1), 1)
        assert total.abs().max() < 1e-4
    assert cache.record["num_rows"] == 12 and cache.k == K
    vocab = json.loads((tiny_teacher / "config.json").read_text())["vocab_size"]
    assert cache.teacher_vocab_size == vocab  # the KD term's shared vocabulary with a padded student
    recorded = table.metadata["teacher_topk"]
    assert recorded["cache_fingerprint"] == cache.fingerprint and recorded["k"] == K
    assert table.fingerprint != table_fingerprint(table.frame)  # the table's fingerprint covers its cache


def test_the_reader_finds_every_sample_across_row_groups_and_parts(tmp_path):
    """Parts of several row groups (as `curate score` writes them, smaller here): each sample reads back as written."""
    import polars as pl

    from syllabus.core.io import atomic_write_parquet
    from syllabus.core.logits import TopK
    from syllabus.core.topk_cache import FLOAT_COLUMNS, topk_columns, write_cache

    generator = torch.Generator().manual_seed(0)
    written, parts = {}, []
    for part in range(2):
        tops, ids = [], []
        for row in range(5):
            tokens = 1 + (part * 5 + row) % 4
            tops.append(TopK(torch.randint(0, 100, (tokens, 3), generator=generator, dtype=torch.int32),
                             torch.randn(tokens, 3, generator=generator), torch.randn(tokens, generator=generator)))
            ids.append(f"s{part}{row}")
        written.update(zip(ids, tops))
        frame = pl.DataFrame({"sample_id": ids, "teacher_ce": [1.0] * 5}).with_columns(
            **{k: pl.from_arrow(v) for k, v in topk_columns(tops).items()})
        parts.append(tmp_path / f"p{part}.parquet")
        atomic_write_parquet(frame, parts[-1], row_group_size=2, byte_stream_split=FLOAT_COLUMNS)
    write_cache(parts, tmp_path / "cache", {"k": 3, "teacher": None, "tokenizer_sha256": "t", "dataset_fingerprint": "d"})
    cache = TopKCache(tmp_path / "cache")
    order = ["s13", "s00", "s04", "s12", "s02"]  # across parts and row groups, out of order
    for sid, got in zip(order, cache.bins(order)):
        assert all(torch.equal(a, b) for a, b in zip(got, written[sid])), sid
    assert cache.missing(["s00", "nope"]) == ["nope"]


@pytest.mark.slow
def test_a_killed_cache_run_resumes_to_the_same_cache(tmp_path, data, tiny_teacher, teacher_only):
    out = tmp_path / "t"
    args = score(data, out, "none", tiny_teacher, "--teacher-topk", str(K))
    preempt = str(Path(__file__).with_name("preempt.py"))
    killed = subprocess.run([sys.executable, preempt, "score-part", "1", "syllabus.curate", *args],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert not (out / CACHE_DIR / CACHE_FILE).exists()
    resumed = subprocess.run([sys.executable, "-m", "syllabus.curate", *args], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    again, reference = TopKCache(out / CACHE_DIR), TopKCache(teacher_only / CACHE_DIR)
    assert again.fingerprint == reference.fingerprint
    ids = read_table(out).frame["sample_id"].to_list()
    for got, want in zip(again.bins(ids), reference.bins(ids)):
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.slow
def test_shard_caches_merge_into_one(tmp_path, data, tiny_teacher, teacher_only):
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"shard{i}")
        invoke(curate_app, score(data, shards[-1], "none", tiny_teacher, "--teacher-topk", str(K),
                                 "--num-shards", "2", "--shard-index", str(i)))
    merged = tmp_path / "merged"
    invoke(curate_app, ["merge", str(shards[0]), str(shards[1]), "--out", str(merged)])
    table = read_table(merged)
    cache = TopKCache(merged / CACHE_DIR)
    assert table.metadata["teacher_topk"]["cache_fingerprint"] == cache.fingerprint
    assert sorted(table.frame["sample_id"]) == sorted(read_table(teacher_only).frame["sample_id"])
    for shard in shards:
        ids = read_table(shard).frame["sample_id"].to_list()
        own = TopKCache(shard / CACHE_DIR)
        for got, want in zip(cache.bins(ids), own.bins(ids)):
            assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_teacher_from_reuses_the_cache(tmp_path, data, tiny_model, teacher_only):
    out = tmp_path / "student"
    invoke(curate_app, score(data, out, tiny_model, None, "--teacher-from", str(teacher_only), "--teacher-topk", str(K)))
    assert TopKCache(out / CACHE_DIR).fingerprint == TopKCache(teacher_only / CACHE_DIR).fingerprint
    assert read_table(out).metadata["teacher_topk"]["k"] == K
    assert not (out / "_work" / "teacher-ce").exists()  # no teacher ran
    other_k = runner.invoke(curate_app, score(data, tmp_path / "k8", tiny_model, None, "--teacher-from",
                                              str(teacher_only), "--teacher-topk", "8"))
    assert other_k.exit_code == 2 and "has a top-4 cache" in other_k.output


def test_a_k_beyond_the_vocabulary_is_refused_before_the_teacher_runs(tmp_path, data, tiny_teacher):
    result = runner.invoke(curate_app, score(data, tmp_path / "t", "none", tiny_teacher, "--teacher-topk", "100000"))
    assert result.exit_code == 2 and "more than the 49152 ids" in result.output
    assert not (tmp_path / "t" / "_work" / "teacher-ce").exists()


def schedule(table: Path, out: Path, *params: str) -> Path:
    invoke(curate_app, ["schedule", str(table), "--out", str(out), "--method", "full", "-p", "epochs=1", *params])
    return out


def train(manifest, out, student, teacher, *extra):
    """`train run` in this process, in fp32 as every in-process run of the suite (accelerate keeps the first
    precision a process asks for)."""
    return runner.invoke(train_app, ["run", "--manifest", str(manifest), "--out", str(out), "--student", str(student),
                                     "--teacher", str(teacher), "--micro-batch-size", "4", "--lr", "1e-4",
                                     "--precision", "fp32", *extra])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_with_the_cached_teacher_loads_no_teacher(tmp_path, cached, tiny_model):
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import setup

    manifest = schedule(cached, tmp_path / "s")
    result = train(manifest, tmp_path / "run", tiny_model, "cached", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    logged = metrics(tmp_path / "run")
    assert len(logged) == 2 and all(r["kd"] > 0 for r in logged)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher"]["cached"] == TopKCache(cached / CACHE_DIR).fingerprint
    run = setup(TrainConfig(manifest=str(manifest), out=str(tmp_path / "run2"), student=str(tiny_model),
                            teacher="cached", precision="fp32"))
    assert run.teacher is None and run.cache is not None


@pytest.mark.slow
def test_a_cache_of_all_but_one_id_trains_as_the_live_teacher(tmp_path, data, tiny_model, tiny_teacher):
    """K = V - 1 leaves one id in the tail: the K + 1 bins are the whole distribution, so one training step on the
    cache equals one on the live teacher (fp32 both), packed and padded: positions and bins line up."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_teacher).vocab_size
    table = tmp_path / "table"
    invoke(curate_app, score(data, table, tiny_model, tiny_teacher, "--teacher-topk", str(vocab - 1),
                             "--dtype", "float32", "--limit", "3"))
    manifest = schedule(table, tmp_path / "s")
    for layout in ("--padding-free", "--padded"):
        runs = {}
        for teacher in ("cached", tiny_teacher):
            runs[teacher] = tmp_path / f"run-{layout}-{Path(str(teacher)).name}"
            result = train(manifest, runs[teacher], tiny_model, teacher, layout)
            assert result.exit_code == 0, result.output
        cached_step, live_step = metrics(runs["cached"])[0], metrics(runs[tiny_teacher])[0]
        assert live_step["kd"] > 0
        assert cached_step["kd"] == pytest.approx(live_step["kd"], rel=1e-4)
        assert cached_step["grad_norm"] == pytest.approx(live_step["grad_norm"], rel=1e-3)


def test_training_refuses_a_table_without_a_cache(tmp_path, data, tiny_model, tiny_teacher):
    table = tmp_path / "table"
    invoke(curate_app, score(data, table, tiny_model, tiny_teacher, "--limit", "4"))
    result = train(schedule(table, tmp_path / "s"), tmp_path / "run", tiny_model, "cached")
    assert result.exit_code == 2 and "has no teacher top-K cache" in result.output and "--teacher-topk" in result.output


def test_training_refuses_a_cache_of_another_teacher_or_other_rows(tmp_path, cached, data, tiny_model):
    table = tmp_path / "table"
    shutil.copytree(cached, table)
    manifest = schedule(table, tmp_path / "s")
    for other, named in [(tmp_path / "other-teacher", "another teacher"), (tmp_path / "other-rows", "other rows")]:
        teacher = tiny_model if named == "another teacher" else read_table(cached).metadata["teacher"]["path"]
        limit = [] if named == "another teacher" else ["--limit", "5"]
        invoke(curate_app, score(data, other, "none", teacher, "--teacher-topk", str(K), "--dtype", "float32", *limit))
        shutil.rmtree(table / CACHE_DIR)
        shutil.copytree(other / CACHE_DIR, table / CACHE_DIR)
        result = train(manifest, tmp_path / "run", tiny_model, "cached")
        assert result.exit_code == 2 and "is not the cache" in result.output and named in result.output


def test_parts_of_another_teachers_cache_put_in_place_are_refused_by_name(tmp_path, cached, data, tiny_model):
    table = tmp_path / "table"
    shutil.copytree(cached, table)
    manifest = schedule(table, tmp_path / "s")
    other = tmp_path / "other-teacher"
    invoke(curate_app, score(data, other, "none", tiny_model, "--teacher-topk", str(K), "--dtype", "float32"))
    for part in sorted((other / CACHE_DIR).glob("part-*.parquet")):  # cache.json stays: only the parts swapped
        (table / CACHE_DIR / part.name).unlink()
        shutil.copyfile(part, table / CACHE_DIR / part.name)
    result = train(manifest, tmp_path / "run", tiny_model, "cached")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "part-00000.parquet: not the part cache.json was written for" in said, said
    record = json.loads((table / CACHE_DIR / CACHE_FILE).read_text())
    del record["part_fingerprints"]  # a cache written before parts had fingerprints: checked as a whole
    (table / CACHE_DIR / CACHE_FILE).write_text(json.dumps(record))
    result = train(manifest, tmp_path / "run", tiny_model, "cached")
    assert result.exit_code == 2 and "its parts are not the ones cache.json was written for" in result.output


def test_training_refuses_a_cache_made_under_another_tokenizer(tmp_path, cached, tiny_model):
    table = tmp_path / "table"
    shutil.copytree(cached, table)
    record = json.loads((table / CACHE_DIR / CACHE_FILE).read_text())
    (table / CACHE_DIR / CACHE_FILE).write_text(json.dumps({**record, "tokenizer_sha256": "0" * 64}))
    result = train(schedule(table, tmp_path / "s"), tmp_path / "run", tiny_model, "cached")
    assert result.exit_code == 2 and "another tokenizer" in result.output


def test_training_names_the_first_sample_the_cache_lacks(cached, tiny_model):
    from transformers import AutoTokenizer

    from syllabus.train.loop import TrainError, check_teacher_cache

    cache = TopKCache(cached / CACHE_DIR)
    ids = set(read_table(cached).frame["sample_id"]) | {"not-a-scored-sample"}
    with pytest.raises(TrainError, match="no row for 1 sample.*first: not-a-scored-sample"):
        check_teacher_cache(cache, AutoTokenizer.from_pretrained(tiny_model), ids, (), "manifest")


def test_training_refuses_a_cached_teacher_at_another_temperature(tmp_path, cached, tiny_model):
    manifest = tmp_path / "s"
    invoke(curate_app, ["schedule", str(cached), "--out", str(manifest), "--method", "srd"])  # tau 1 -> 2
    result = train(manifest, tmp_path / "run", tiny_model, "cached")
    assert result.exit_code == 2 and "at temperature" in result.output and "serves temperature 1 only" in result.output
    assert "epoch 1 " not in result.output  # SRD's first stage is at temperature 1: the first refused is a later one
