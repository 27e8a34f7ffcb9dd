"""LLM-as-a-judge win rates (Zheng et al. 2023, MT-bench's pairwise judge), as SpectrumKD reports WR.

Each pair (one prompt, the generation of run A and that of run B, or the set's reference in place of B) is judged
twice, A shown first and then B shown first, to cancel the judge's position bias; MT-bench's rule combines the two:
the same winner in both orders wins, a verdict that flips with the order is a tie. A judgment with none of the
verdict marks is counted as unparsed and shown, never guessed. WR = wins / decided pairs x 100, ties counted in the
denominator and reported apart (a tie is half a win in `wr_ties_half`, as MT-bench's "win rate (adjusted)").

The prompt is MT-bench's `pair-v2` (FastChat `fastchat/llm_judge/data/judge_prompts.jsonl`, Apache-2.0), recorded
with the judge's name and settings in every output. Judgments are appended to OUT/judgments.jsonl as they come, one
line each, keyed by the prompt version, the judge, the question, the two answers and the order: a re-run (after a
crash, or with more sets) judges only what is missing. The judge is any OpenAI-compatible chat endpoint
(`vllm serve`, a hosted API: bounded concurrency, retries with exponential backoff, a timeout per request), or a
model run here (`LocalJudge`: vLLM, greedy, through its chat template).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PROMPT_VERSION = "mt-bench-pair-v2"
SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. You should choose the assistant that follows the user's instructions and answers "
    "the user's question better. Your evaluation should consider factors such as the helpfulness, relevance, "
    "accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by comparing the two "
    "responses and provide a short explanation. Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. Do not allow the length of the responses to "
    "influence your evaluation. Do not favor certain names of the assistants. Be as objective as possible. After "
    "providing your explanation, output your final verdict by strictly following this format: \"[[A]]\" if "
    "assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)
USER_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's "
    "Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
MARKS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}
JUDGMENTS = "judgments.jsonl"


class JudgeError(RuntimeError):
    """The judge could not be reached or kept failing; the judgments made so far are kept."""


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a judgment: the last verdict mark in it (the final verdict comes after the
    explanation, which may quote the marks); None when it holds none."""
    found = [(text.rfind(mark), verdict) for mark, verdict in MARKS.items() if mark in text]
    return max(found)[1] if found else None


def pair_outcome(a_first: str | None, b_first: str | None) -> str:
    """The pair's outcome for A from its two verdicts (A shown first; B shown first): "win", "loss", "tie" (equal
    ties, or a verdict that flips with the order) or "unparsed"."""
    if a_first is None or b_first is None:
        return "unparsed"
    first = {"A": "win", "B": "loss", "tie": "tie"}[a_first]
    second = {"B": "win", "A": "loss", "tie": "tie"}[b_first]  # A was shown as assistant B
    return first if first == second else "tie"


def win_rates(outcomes: dict[str, list[str]]) -> dict[str, Any]:
    """Per set and over all pairs: the counts, WR (wins over decided pairs) and WR with ties as half a win."""
    def rates(values: list[str]) -> dict[str, Any]:
        counts = {k: values.count(k) for k in ("win", "loss", "tie", "unparsed")}
        decided = counts["win"] + counts["loss"] + counts["tie"]
        return {**counts, "pairs": len(values),
                "wr": round(100 * counts["win"] / decided, 2) if decided else None,
                "wr_ties_half": round(100 * (counts["win"] + counts["tie"] / 2) / decided, 2) if decided else None}

    return {"sets": {name: rates(values) for name, values in outcomes.items()},
            "overall": rates([v for values in outcomes.values() for v in values])}


def judgment_key(judge: dict[str, Any], question: str, first: str, second: str) -> str:
    payload = json.dumps([PROMPT_VERSION, judge, question, first, second], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)}]


@dataclass(frozen=True)
class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint as the judge (`vllm serve`, a hosted API)."""

    url: str  # the API root, e.g. http://localhost:8000/v1
    model: str
    api_key_env: str | None = None  # the environment variable holding the key, never the key itself
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout_s: float = 120.0
    retries: int = 4
    concurrency: int = 8

    def identity(self) -> dict[str, Any]:
        """What decides a judgment (the key of stored ones): not the concurrency, retries or key."""
        return {"url": self.url.rstrip("/"), "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def __call__(self, chat: list[dict[str, str]]) -> str:
        """The judge's reply to one conversation.

        Raises:
            JudgeError: the endpoint is unreachable, refuses, or keeps failing past the retries (named, with what
                it said).
        """
        import httpx

        headers = {}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(f"--judge-api-key-env {self.api_key_env}: the variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "messages": chat, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        endpoint = self.url.rstrip("/") + "/chat/completions"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2 ** (attempt - 1), 30))  # 1, 2, 4, ... s
            try:
                response = httpx.post(endpoint, json=body, headers=headers, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:  # a request it will never accept: no retry
                raise JudgeError(f"{endpoint} refused the request (HTTP {response.status_code}): "
                                 f"{response.text[:300]}")
            try:
                return response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise JudgeError(f"{endpoint} answered with no chat completion: {response.text[:300]}") from None
        raise JudgeError(f"{endpoint}: no answer after {self.retries + 1} attempts (last: {problem}). Is the judge "
                         "running? The judgments made so far are kept: run the same command again to go on")

    def judge_many(self, chats: list[list[dict[str, str]]], record: Callable[[int, str], None]) -> None:
        """Every chat, `concurrency` requests in flight; `record(i, reply)` as each completes (a failure stops no
        finished one, and the first is raised once the others are in)."""
        failure: BaseException | None = None
        with ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            futures = {pool.submit(self, chat): i for i, chat in enumerate(chats)}
            for future in as_completed(futures):
                try:
                    text = future.result()
                except BaseException as exc:
                    if failure is None:
                        failure = exc
                        for pending in futures:
                            pending.cancel()
                    continue
                record(futures[future], text)
        if failure is not None:
            raise failure


@dataclass(frozen=True)
class LocalJudge:
    """A judge model run here (`--judge-model DIR` without --judge-url): vLLM where installed, else transformers;
    through the model's chat template, in batches whose judgments are stored as each batch ends."""

    model: str
    max_tokens: int = 1024
    tensor_parallel_size: int = 1
    batch: int = 64
    temperature: float = 0.0  # > 0 samples, seeded per request by the judgment's order in the run

    def identity(self) -> dict[str, Any]:
        from syllabus.core.models import resolve_model

        ref = resolve_model(self.model, "teacher")
        return {**ref.identity(), "temperature": self.temperature, "max_tokens": self.max_tokens}

    def judge_many(self, chats: list[list[dict[str, str]]], record: Callable[[int, str], None]) -> None:
        from syllabus.core.engines import GenerationParams, open_engine, vllm_available
        from syllabus.core.models import load_tokenizer, resolve_model
        from syllabus.core.precision import resolve_dtype

        if not chats:
            return
        ref = resolve_model(self.model, "teacher")
        tokenizer = load_tokenizer(ref)
        if not getattr(tokenizer, "chat_template", None):
            raise JudgeError(f"judge {self.model}: its tokenizer has no chat template; a judge is a chat model")
        prompts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True) for chat in chats]
        prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
        kind = "vllm" if vllm_available() else "hf"
        options = {"dtype": resolve_dtype("auto")}
        if kind == "vllm":
            options.update(max_model_len=max(len(p) for p in prompts) + self.max_tokens,
                           tensor_parallel_size=self.tensor_parallel_size)
        engine = open_engine(kind, str(ref.path), **options)
        try:
            params = GenerationParams(temperature=self.temperature, max_new_tokens=self.max_tokens)
            for start in range(0, len(prompts), self.batch):
                chunk = prompts[start:start + self.batch]
                seeds = list(range(start, start + len(chunk)))
                for k, generations in enumerate(engine.generate(chunk, params, seeds)):
                    record(start + k, tokenizer.decode(generations[0].token_ids, skip_special_tokens=True))
        finally:
            engine.close()


@dataclass(frozen=True)
class Pair:
    set: str
    row: int
    seed: int
    question: str
    answer_a: str
    answer_b: str


def read_judgments(path: Path) -> dict[str, dict[str, Any]]:
    """The stored judgments by key; a last line cut short by a crash is dropped (it is judged again)."""
    if not path.exists():
        return {}
    stored = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stored[record["key"]] = record
    return stored


def judge_pairs(pairs: list[Pair], judge: Any, identity: dict[str, Any], out: Path,
                progress: bool = True) -> dict[str, list[str]]:
    """Judge every pair in both orders (only the judgments OUT does not hold yet) and return each set's outcomes.

    Judgments are appended to OUT/judgments.jsonl as they complete (flushed line by line), so an interruption
    loses only the requests in flight.

    Raises:
        JudgeError: from the judge; what was judged before it is kept.
    """
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    path = out / JUDGMENTS
    stored = read_judgments(path)
    requests = {}
    for pair in pairs:
        for first, second in ((pair.answer_a, pair.answer_b), (pair.answer_b, pair.answer_a)):
            key = judgment_key(identity, pair.question, first, second)
            if key not in stored:
                requests[key] = messages(pair.question, first, second)
    bar = tqdm(total=len(requests), desc="judge", unit="judgment", disable=not progress, dynamic_ncols=True)
    keys = list(requests)
    with path.open("a") as sink:
        def record(i: int, text: str) -> None:
            entry = {"key": keys[i], "judgment": text, "verdict": parse_verdict(text)}
            sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
            sink.flush()
            stored[keys[i]] = entry
            bar.update(1)

        try:
            judge.judge_many([requests[k] for k in keys], record)
        finally:
            bar.close()
    outcomes: dict[str, list[str]] = {}
    for pair in pairs:
        a_first = stored[judgment_key(identity, pair.question, pair.answer_a, pair.answer_b)]["verdict"]
        b_first = stored[judgment_key(identity, pair.question, pair.answer_b, pair.answer_a)]["verdict"]
        outcomes.setdefault(pair.set, []).append(pair_outcome(a_first, b_first))
    return outcomes


REFERENCES = "references"  # `evaluate judge RUN references`: each set's first reference as run B


def judge_runs(run_a: Path, run_b: Path | str, judge: EndpointJudge | LocalJudge, out: Path, seeds: tuple[int, ...] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Win rates of evaluation run A against run B (or the sets' references) on the sets and seeds both have.

    Code sets are left out (pass@1 scores them). Writes OUT/judge.json and OUT/judge.md; returns the summary.

    Raises:
        ValueError: a directory that is not an evaluation run, runs of other sets or protocols, no common pairs.
        JudgeError: from the judge (the judgments made are kept).
    """
    from .sets import load_sets

    a = _read_run(run_a)
    b = None if run_b == REFERENCES else _read_run(Path(run_b))
    if b is not None and a["protocol"] != b["protocol"]:
        raise ValueError(f"{run_a} and {run_b} were evaluated under different protocols: their generations are not "
                         "comparable (evaluate both with the same settings)")
    names = [n for n in a["results"]["order"] if a["results"]["sets"][n]["metric"] != "pass@1"
             and (b is None or n in b["results"]["sets"])]
    if not names:
        raise ValueError(f"{run_a} and {run_b} share no set a judge can compare (code sets are scored by pass@1)")
    chosen = seeds or (a["protocol"]["seeds"][0],)
    sets = load_sets(tuple(names), a["limit"])
    pairs = []
    for name in names:
        for run in (a, b):
            if run is not None and run["results"]["sets"][name]["sha256"] != sets[name].sha256:
                raise ValueError(f"set {name}: {run['dir']} was evaluated on another version of its file")
        for seed in chosen:
            mine = _generations(run_a, name, seed)
            theirs = None if b is None else _generations(Path(run_b), name, seed)
            for row, answer in sorted(mine.items()):
                other = sets[name].rows[row].references[0] if theirs is None else theirs.get(row)
                if other is not None:
                    pairs.append(Pair(name, row, seed, sets[name].rows[row].prompt, answer, other))
    if not pairs:
        raise ValueError(f"no (set, row, seed) is in both {run_a} and {run_b} for seeds {list(chosen)}")
    identity = judge.identity()
    outcomes = judge_pairs(pairs, judge, identity, out, progress)
    summary = {
        "a": a["label"], "b": REFERENCES if b is None else b["label"],
        "runs": [str(run_a), str(run_b)], "seeds": list(chosen),
        "judge": identity,
        "prompt": {"version": PROMPT_VERSION, "system": SYSTEM_PROMPT, "user": USER_TEMPLATE},
        "results": win_rates(outcomes),
    }
    from syllabus.core.io import atomic_write_bytes, atomic_write_json

    atomic_write_json(out / "judge.json", summary)
    atomic_write_bytes(out / "judge.md", markdown(summary).encode())
    return summary


def markdown(summary: dict[str, Any]) -> str:
    judge = summary["judge"].get("model") or summary["judge"].get("name")
    lines = [f"# {summary['a']} against {summary['b']}: judged by {judge}", "",
             f"MT-bench pairwise judge ({summary['prompt']['version']}), both orders, a flip counted as a tie; "
             f"seeds {summary['seeds']}.", "",
             "| set | pairs | wins | losses | ties | unparsed | WR | WR (ties half) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = {**summary["results"]["sets"], "**overall**": summary["results"]["overall"]}
    for name, r in rows.items():
        wr = "-" if r["wr"] is None else f"{r['wr']:.1f}"
        half = "-" if r["wr_ties_half"] is None else f"{r['wr_ties_half']:.1f}"
        lines.append(f"| {name} | {r['pairs']} | {r['win']} | {r['loss']} | {r['tie']} | {r['unparsed']} | {wr} | "
                     f"{half} |")
    return "\n".join(lines) + "\n"


def _read_run(run: Path) -> dict[str, Any]:
    from .compare import load_summary  # a CompareError (a ValueError) names a missing or damaged summary

    return {**load_summary(run), "dir": str(run)}


def _generations(run: Path, name: str, seed: int) -> dict[int, str]:
    import polars as pl

    path = run / "generations" / f"{name}-seed{seed}.parquet"
    if not path.exists():
        raise ValueError(f"{path} is missing: {run} was not evaluated with seed {seed} (pass --seeds with one it has)")
    frame = pl.read_parquet(path, columns=["row", "generation"])
    return dict(zip(frame["row"].to_list(), frame["generation"].to_list()))
