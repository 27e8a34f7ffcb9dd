"""The work of a scoring pass on one part, as a small picklable object that runs wherever an engine can start.

`curate score` cuts the usable rows into parts; a pass turns a part's rows (`part_rows`: sample ids, token ids,
prompt lengths, references) into the part's frame. The same `PassWorker` runs in the scoring process (the local
backend) and inside each Ray replica (`curate.backends`), so both backends write the same table: a worker carries
the model's path, the engine settings and, for generation, the sampling settings and the tokenizer, never the
dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from syllabus.core.engines import EngineSlot
from syllabus.core.engines.base import GenerationParams, ScoringRequest, request_seed
from syllabus.core.rouge import rouge_l
from syllabus.core.topk_cache import topk_columns

GEN, CE = "gen", "ce"

ROWS_SCHEMA = {"sample_id": pl.String, "ids": pl.List(pl.Int32), "prompt_len": pl.Int32,
               "references": pl.List(pl.String)}


def part_rows(sample_ids: list[str], ids: list[list[int]], prompt_lens: list[int],
              references: list[list[str]]) -> pl.DataFrame:
    """A part's rows, as a pass reads them: one per sample, in the part's order."""
    return pl.DataFrame({"sample_id": sample_ids, "ids": ids, "prompt_len": prompt_lens, "references": references},
                        schema=ROWS_SCHEMA)


@dataclass(frozen=True)
class PassWorker:
    """One pass over parts: student generation (`GEN`) or teacher-forced CE (`CE`) with one model.

    Attributes:
        kind: GEN or CE.
        engine: "vllm" or "hf".
        model_path: the model's local directory.
        options: the engine's settings (`score.engine_options`).
        column: the CE column (`student_ce`, `teacher_ce`); unused by GEN.
        topk: with CE, keep the top K of every response token (the teacher cache); 0: no.
        generation: GEN's sampling settings.
        tokenizer: GEN decodes with it.
    """

    kind: str
    engine: str
    model_path: str
    options: dict[str, Any]
    column: str = ""
    topk: int = 0
    generation: GenerationParams | None = None
    tokenizer: Any = None

    def __call__(self, rows: pl.DataFrame, engines: EngineSlot) -> pl.DataFrame:
        """The part's frame: `sample_id`, the pass's columns, and `_tokens` (the tokens it processed). The engine
        comes from the slot of the process it runs in, kept open across parts: one start per process."""
        engine = engines.get(self.engine, self.model_path, **self.options)
        return self._generate(engine, rows) if self.kind == GEN else self._cross_entropy(engine, rows)

    def _generate(self, engine: Any, rows: pl.DataFrame) -> pl.DataFrame:
        params = self.generation
        ids, prompt_lens = rows["ids"].to_list(), rows["prompt_len"].to_list()
        prompts = [seq[:n] for seq, n in zip(ids, prompt_lens)]
        seeds = [request_seed(params.seed, sid) for sid in rows["sample_id"]]
        out = []
        for sid, refs, samples in zip(rows["sample_id"], rows["references"].to_list(),
                                      engine.generate(prompts, params, seeds)):
            texts = [self.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() for g in samples]
            # With several samples per prompt, rouge_l and output_ce are means over them (documented choice).
            rouges = [rouge_l(t, refs) for t in texts]
            ces = [c for c in (-sum(g.logprobs) / len(g.logprobs) if g.logprobs else None for g in samples)
                   if c is not None]
            out.append({
                "sample_id": sid,
                "student_output": texts[0],
                "student_outputs": texts if params.num_samples > 1 else None,
                "rouge_l": sum(rouges) / len(rouges),
                "output_ce": sum(ces) / len(ces) if ces else None,
                "output_tokens": len(samples[0].token_ids),
                "_tokens": sum(len(g.token_ids) for g in samples),
            })
        frame = pl.DataFrame(out, schema_overrides={"student_outputs": pl.List(pl.String)})
        return frame if params.num_samples > 1 else frame.drop("student_outputs")

    def _cross_entropy(self, engine: Any, rows: pl.DataFrame) -> pl.DataFrame:
        requests = [ScoringRequest(seq, n) for seq, n in zip(rows["ids"].to_list(), rows["prompt_len"].to_list())]
        nll, tops = engine.response_scores(requests, self.topk)
        frame = pl.DataFrame({"sample_id": rows["sample_id"], self.column: nll,
                              "_tokens": [len(r.ids) for r in requests]})
        if not self.topk:
            return frame
        return frame.with_columns(**{k: pl.from_arrow(v) for k, v in topk_columns(tops).items()})
