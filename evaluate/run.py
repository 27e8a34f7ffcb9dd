"""`evaluate run`: generate on each evaluation set under each seed, score, and summarise like the papers' tables.

Output directory::

    OUT/generations/<set>-seed<seed>.parquet   one row per prompt: row, seed, generation, score (x100)
    OUT/summary.json, OUT/summary.md            per set: mean over seeds and spread across seeds; average over sets
    OUT/_work/run.json                          the run identity (a re-run resumes, a different one is refused)

Each (set, seed) file is written atomically when finished, so an interrupted run resumes where it stopped. The
(set, seed) jobs run in this process, or spread over the engines of a Ray cluster (`--backend ray`,
`core/backends.py`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from syllabus.core.backends import PartFailure, open_backend
from syllabus.core.engines import EngineSlot
from syllabus.core.engines.base import GenerationParams, request_seed
from syllabus.core.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet
from syllabus.core.models import load_tokenizer, resolve_model
from syllabus.core.attention import resolve_attention
from syllabus.core.precision import resolve_dtype
from syllabus.core.workdir import claim_output, release_output

from .config import EvalConfig
from .protocol import EvalProtocol, score_row
from .code import CODE_METRIC, PASS_AT, pass_at_k
from .sets import EvalSet, EvalSetError, load_sets


class EvalRunError(ValueError):
    """(set, seed) jobs failed on the engines (named, with the error); the finished ones are kept."""


def resolve_engine(choice: str) -> str:
    from syllabus.core.engines import vllm_available

    if choice == "auto":
        return "vllm" if vllm_available() else "hf"
    if choice == "vllm" and not vllm_available():
        raise ValueError("the vllm engine needs `pip install syllabus[vllm]` (GPU) or `syllabus[cpu]`")
    return choice


def engine_options(config: EvalConfig, kind: str) -> dict[str, Any]:
    p = config.protocol
    dtype = resolve_dtype(config.dtype)  # resolved already when evaluating; a caller of its own may pass "auto"
    if kind == "vllm":
        return {"dtype": dtype, "max_model_len": p.max_prompt_tokens + p.max_new_tokens, "seed": 0,
                "tensor_parallel_size": config.tensor_parallel_size}
    return {"dtype": dtype, "batch_tokens": config.batch_tokens, "attention": resolve_attention(config.attention)}


def set_prompts(eval_set: EvalSet, tokenizer: Any, protocol: EvalProtocol) -> list[list[int]]:
    """The set's prompts as the engine takes them (templated, tokenised, cut to --max-prompt-tokens): once per set,
    whatever the number of seeds.

    Raises:
        EvalSetError: a prompt encodes to no token (named by file and line), or a code prompt is longer than
            --max-prompt-tokens (a cut code prompt cannot be completed: the program runs the whole one).
    """
    chat = protocol.template == "chat"  # the chat template writes its own special tokens
    whole = [tokenizer(r.templated(protocol.template, tokenizer), add_special_tokens=not chat).input_ids
             for r in eval_set.rows]
    prompts = [ids[: protocol.max_prompt_tokens] for ids in whole]
    for row, prompt, ids in zip(eval_set.rows, prompts, whole):
        if eval_set.metric == CODE_METRIC and len(ids) > protocol.max_prompt_tokens:
            longest = max(len(i) for i in whole)
            raise EvalSetError(f"{eval_set.name} row {row.line}: the prompt is {len(ids)} tokens, over "
                               f"--max-prompt-tokens {protocol.max_prompt_tokens}, and a code prompt cannot be cut "
                               f"(the completion continues it): pass --max-prompt-tokens {longest} or more (the "
                               "longest prompt of the set)")
        if not prompt:  # an engine cannot generate from nothing
            raise EvalSetError(f"{eval_set.path}:{row.line}: the prompt encodes to no token with this model's "
                               "tokenizer; fix or remove the row")
    return prompts


def job_rows(eval_set: EvalSet, seed: int, prompts: list[list[int]]) -> pl.DataFrame:
    """One (set, seed) job's rows, as `EvalWorker` reads them: the set's prompts (`set_prompts`), each with its
    sampling seed."""
    return pl.DataFrame({
        "set": eval_set.name, "metric": eval_set.metric, "seed": seed, "row": list(range(len(prompts))),
        "prompt": prompts, "request_seed": [request_seed(seed, f"{eval_set.name}:{i}") for i in range(len(prompts))],
        "references": [list(r.references) for r in eval_set.rows],
    }, schema_overrides={"prompt": pl.List(pl.Int32), "references": pl.List(pl.String)})


@dataclass(frozen=True)
class EvalWorker:
    """Generates and scores one (set, seed) job: picklable, so a Ray replica runs it as this process does."""

    engine: str
    model_path: str
    options: dict[str, Any]
    tokenizer: Any
    protocol: EvalProtocol

    def __call__(self, rows: pl.DataFrame, engines: EngineSlot) -> pl.DataFrame:
        """The job's generations and per-row scores (x100), on the engine of the slot of the process it runs in."""
        p = self.protocol
        engine = engines.get(self.engine, self.model_path, **self.options)
        params = GenerationParams(temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_new_tokens,
                                  seed=int(rows["seed"][0]), no_repeat_ngram_size=p.no_repeat_ngram_size)
        gens = engine.generate(rows["prompt"].to_list(), params, rows["request_seed"].to_list())
        metric = rows["metric"][0]
        # code keeps its leading indentation: the completion continues a function body
        trim = str.rstrip if metric == CODE_METRIC else str.strip
        texts = [trim(self.tokenizer.decode(g[0].token_ids, skip_special_tokens=True)) for g in gens]
        return pl.DataFrame(
            {
                "set": rows["set"],
                "row": rows["row"],
                "seed": rows["seed"],
                "generation": texts,
                "generation_tokens": [len(g[0].token_ids) for g in gens],
                "score": [score_row(metric, t, tuple(refs)) for t, refs in zip(texts, rows["references"].to_list())],
            },
            schema_overrides={"row": pl.Int32, "seed": pl.Int32, "generation_tokens": pl.Int32},
        )


def summarize(per_seed: dict[str, dict[int, float]], sets: dict[str, EvalSet]) -> dict[str, Any]:
    """Mean over seeds and sample standard deviation across seeds, per set; unweighted average over sets."""
    out: dict[str, Any] = {}
    for name, by_seed in per_seed.items():
        values = [by_seed[s] for s in sorted(by_seed)]
        out[name] = {
            "metric": sets[name].metric,
            "rows": len(sets[name].rows),
            "sha256": sets[name].sha256,
            "per_seed": {str(s): round(by_seed[s], 4) for s in sorted(by_seed)},
            "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        }
    means = [v["mean"] for v in out.values()]
    # JSON is written with sorted keys; `order` keeps the user's set order for tables
    return {"sets": out, "order": list(per_seed), "average": round(statistics.fmean(means), 4)}


def markdown_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of {summary['label']}",
        "",
        f"model `{summary['model']['path']}`, engine {summary['engine']}, seeds {summary['protocol']['seeds']}"
        + (f", {summary['protocol']['template']} template" if "template" in summary["protocol"] else "")
        + (f", first {summary['limit']} rows per set" if summary["limit"] else ""),
        "",
        "| set | metric | rows | mean | spread (std over seeds) |",
        "|---|---|---:|---:|---:|",
    ]
    for name in summary["results"]["order"]:
        s = summary["results"]["sets"][name]
        lines.append(f"| {name} | {s['metric']} | {s['rows']} | {s['mean']:.2f} | {s['std']:.2f} |")
    lines.append(f"| **Avg.** | | | **{summary['results']['average']:.2f}** | |")
    for name in summary["results"]["order"]:
        if "pass_at_k" in summary["results"]["sets"][name]:
            ks = ", ".join(f"{k} {v:.2f}" for k, v in summary["results"]["sets"][name]["pass_at_k"].items())
            lines += ["", f"`{name}`: {ks} (unbiased estimator over the seeds' samples); code run with "
                      f"{summary['code_execution']}."]
    if "unni_short" in summary["results"]["sets"]:
        lines += ["", "`unni_short` is a 1-2 word-answer subset of UnNI, not the papers' 10k UnNI set."]
    return "\n".join(lines) + "\n"


EVAL_NAMES = ("generations", "summary.json", "summary.md")  # what an evaluation run writes in --out, besides _work


def evaluate(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run the protocol on every set and seed (resuming finished ones) and write the summaries; --out is locked
    for this process meanwhile.

    Returns:
        The summary (also written to OUT/summary.json).
    """
    try:  # "auto" becomes this machine's format and attention here, so the summary and the run identity record the
        # real ones, and an attention this machine cannot run is refused before any model loads
        return _evaluate(dataclasses.replace(config, dtype=resolve_dtype(config.dtype),
                                             attention=resolve_attention(config.attention)), progress)
    finally:
        release_output(Path(config.out))


def check_code_execution(config: EvalConfig, sets: dict[str, EvalSet]) -> str | None:
    """For code sets: refuse without --allow-code-execution, or where the sandbox cannot hold its limits; say
    what contains the programs here (recorded in the summary). None without code sets.

    Raises:
        ValueError: as above, saying what to do.
    """
    code = [name for name, s in sets.items() if s.metric == CODE_METRIC]
    if not code:
        return None
    if not config.allow_code_execution:
        raise ValueError(f"--sets {','.join(code)} runs the code the model writes, and model code is untrusted "
                         "code: pass --allow-code-execution to run it, each program in a sandbox (time, memory, "
                         "file-size and process limits, no network; docs/methods.md, \"Code evaluation\")")
    from .sandbox import SandboxError, isolation

    try:
        return isolation().describe()
    except SandboxError as exc:
        raise ValueError(f"--allow-code-execution: {exc}") from None


def pass_at_ks(frames: list[pl.DataFrame]) -> dict[str, float]:
    """pass@k of a code set from its seeds' per-row scores (one sample per row and seed), for each k in PASS_AT
    up to the number of seeds."""
    rows = pl.concat(frames).group_by("row").agg(n=pl.len(), c=(pl.col("score") > 0).sum()).sort("row")
    n, c = rows["n"].to_list(), rows["c"].to_list()
    return {f"pass@{k}": round(pass_at_k(n, c, k), 4) for k in PASS_AT if k <= min(n)}


def _evaluate(config: EvalConfig, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from syllabus.core.versions import versions

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the run")
    sets = load_sets(config.sets, config.limit)  # before the model: a bad set fails at once
    sandbox = check_code_execution(config, sets)
    model = resolve_model(config.model, "student")
    tokenizer = load_tokenizer(model)
    if config.protocol.template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--template chat: the tokenizer of {model.name} has no chat template; use --template alpaca")
    kind = resolve_engine(config.engine)
    identity = {
        "model": model.identity(),
        "sets": {name: s.sha256 for name, s in sets.items()},
        "limit": config.limit,
        "protocol": config.protocol.as_dict(),
        "engine": kind,
        "dtype": config.dtype,
    }
    if config.tensor_parallel_size != 1:  # absent at 1, so runs from before the option keep their identity
        identity["tensor_parallel_size"] = config.tensor_parallel_size
    if kind == "hf" and config.attention != "sdpa":  # likewise: sdpa is what models loaded with
        identity["attention"] = config.attention
    jobs = [(name, seed) for name in sets for seed in config.protocol.seeds]
    # every prompt checked before anything is written: a refused set leaves no run behind to --overwrite
    prompts = {name: set_prompts(eval_set, tokenizer, config.protocol) for name, eval_set in sets.items()}
    claim_output(out, identity, config.overwrite, what="evaluation run", names=EVAL_NAMES)
    path = {job: out / "generations" / f"{job[0]}-seed{job[1]}.parquet" for job in jobs}
    todo = [job for job in jobs if not path[job].exists()]
    worker = EvalWorker(kind, str(model.path), engine_options(config, kind), tokenizer, config.protocol)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="evaluate", unit="set-seed",
               disable=not progress, dynamic_ncols=True)
    tokens, start, failures = 0, time.perf_counter(), []
    # the backend holds the engine and closes it when the jobs end or fail
    with open_backend(config.backend, config.ray_address, config.replicas, config.tensor_parallel_size) as backend:
        jobs_rows = ((k, job_rows(sets[name], seed, prompts[name])) for k, (name, seed) in enumerate(todo))
        for k, frame in backend.map_parts(worker, jobs_rows):
            if isinstance(frame, PartFailure):
                failures.append(f"{todo[k][0]} seed {todo[k][1]}: {frame.error}")
                continue
            atomic_write_parquet(frame, path[todo[k]])
            tokens += int(frame["generation_tokens"].sum())
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    if failures:
        raise EvalRunError(f"{len(failures)} of {len(todo)} (set, seed) job(s) failed on the {backend.name} backend; "
                           "the others are written. Fix the cause and run the same command again: it runs only "
                           "these.\n  " + "\n  ".join(failures[:5]))
    per_seed: dict[str, dict[int, float]] = {name: {} for name in sets}
    for name, seed in jobs:
        per_seed[name][seed] = pl.read_parquet(path[(name, seed)], columns=["score"])["score"].mean()
    summary = {
        "label": config.label or model.name,
        "model": identity["model"],
        "engine": kind,
        "dtype": config.dtype,
        "limit": config.limit,
        "protocol": identity["protocol"],
        "versions": versions(),
        "results": summarize(per_seed, sets),
    }
    for name, eval_set in sets.items():
        if eval_set.metric == CODE_METRIC:
            summary["results"]["sets"][name]["pass_at_k"] = pass_at_ks(
                [pl.read_parquet(path[(name, seed)], columns=["row", "score"]) for seed in config.protocol.seeds])
    if sandbox is not None:
        summary["code_execution"] = sandbox
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.md", markdown_summary(summary).encode())
    return summary
