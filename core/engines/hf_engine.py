"""The transformers engine: the numerical reference in tests, and the fallback where vLLM is missing.

On CPU it is also the faster teacher-forcing engine (bf16 forward on AMX, docs/benchmarks.md), so `curate score`
uses it for the CE passes there by default. Its scoring pass is `core.scoring`'s, shared with the trainer.
"""

from __future__ import annotations

from typing import Any

import torch

from syllabus.core.logits import TopK, checked_logit_head
from syllabus.core.scoring import (
    SCORING_PACK_TOKENS,
    default_batch_tokens,
    length_batches,
    response_nll,
    response_scores,
    scoring_pack_tokens,
)

from .base import Generation, GenerationParams, ScoringRequest

GENERATION_BATCH = 16


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        device: str | None = None,
        batch_tokens: int | None = None,
        max_model_len: int | None = None,
        padding_free: bool | None = None,
        pack_tokens: int = SCORING_PACK_TOKENS,
        attention: str = "sdpa",
        **_: Any,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or default_device()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype),
                                                          attn_implementation=attention).to(self.device)
        self.model.eval()
        checked_logit_head(self.model, model_path)  # logits computed from the head must be the model's own
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.batch_tokens = batch_tokens or default_batch_tokens()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.pack_tokens = scoring_pack_tokens(self.model, padding_free, pack_tokens)

    def close(self) -> None:
        del self.model

    def response_nll(self, requests: list[ScoringRequest]) -> list[float]:
        return response_nll(self.model, requests, self.batch_tokens, self.pad_id, self.pack_tokens)

    def response_scores(self, requests: list[ScoringRequest], topk: int = 0) -> tuple[list[float], list[TopK] | None]:
        return response_scores(self.model, requests, self.batch_tokens, self.pad_id, self.pack_tokens, topk)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: GenerationParams, seeds: list[int],
                 budgets: list[int] | None = None) -> list[list[Generation]]:
        """Batched sampling. One seed per call (transformers has no per-row generators), so outputs depend on
        the batch: `curate score` calls it on fixed parts, which keeps resumed runs identical."""
        torch.manual_seed(seeds[0] if seeds else params.seed)
        eos = self.tokenizer.eos_token_id
        result: list[list[Generation]] = [[] for _ in prompts]
        lengths = [len(p) for p in prompts]
        # Decoding is memory-bound: batches of up to GENERATION_BATCH prompts, whatever their length.
        for batch in length_batches(lengths, GENERATION_BATCH * max(lengths, default=1)):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding for decoder-only generation
                ids[row, width - lengths[i] :] = torch.tensor(prompts[i])
                mask[row, width - lengths[i] :] = 1
            sample = params.temperature > 0
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=sample,
                temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None,
                top_k=0 if sample else None,
                max_new_tokens=max(budgets[i] for i in batch) if budgets else params.max_new_tokens,
                num_return_sequences=params.num_samples,
                no_repeat_ngram_size=params.no_repeat_ngram_size or None,
                pad_token_id=self.pad_id,
                eos_token_id=eos,
                output_logits=True,
                return_dict_in_generate=True,
            )
            new = out.sequences[:, width:]  # (B * n, steps)
            raw = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (B * n, steps, V): raw, temperature 1
            chosen = raw.gather(2, new[:, :, None]).squeeze(2)
            for k in range(new.shape[0]):
                tokens = new[k].tolist()[: budgets[batch[k // params.num_samples]] if budgets else None]
                stop = tokens.index(eos) + 1 if eos in tokens else len(tokens)
                result[batch[k // params.num_samples]].append(Generation(tokens[:stop], chosen[k, :stop].tolist()))
        return result
