"""The transformers engine: the numerical reference in tests, and the fallback where vLLM is missing.

On CPU it is also the faster teacher-forcing engine (bf16 forward on AMX, docs/benchmarks.md), so `curate score`
uses it for the CE passes there by default.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Generation, GenerationParams, ScoringRequest

LOGIT_CHUNK_TOKENS = 1024  # at most one (chunk, V) fp32 tensor alive while reducing logits to log-probs


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group indices into batches of similar length whose padded size stays within `batch_tokens`.

    Sorting by length is where the CPU speed is: padding is wasted compute.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class HFEngine:
    name = "hf"

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        device: str | None = None,
        batch_tokens: int = 8192,
        max_model_len: int | None = None,
        **_: Any,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or default_device()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.batch_tokens = batch_tokens
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)

    def close(self) -> None:
        del self.model

    def _token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log q(target | prefix) for (N, H) final hidden states, computed in token chunks, fp32 softmax."""
        head = self.model.get_output_embeddings()
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.shape[0], LOGIT_CHUNK_TOKENS):
            end = start + LOGIT_CHUNK_TOKENS
            logits = head(hidden[start:end]).float()  # (chunk, V)
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            out[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - logits.logsumexp(-1)
        return out

    @torch.inference_mode()
    def response_nll(self, requests: list[ScoringRequest]) -> list[float]:
        lengths = [len(r.ids) for r in requests]
        result = [0.0] * len(requests)
        backbone = self.model.get_decoder()
        for batch in length_batches(lengths, self.batch_tokens):
            width = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = torch.tensor(requests[i].ids)
                mask[row, : lengths[i]] = 1  # from lengths, never from pad ids (pad == eos here)
            hidden = backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            # Position t predicts token t+1: score predictions for prompt_len-1 .. len-2.
            rows, cols, targets, owners = [], [], [], []
            for row, i in enumerate(batch):
                p, n = requests[i].prompt_len, lengths[i]
                span = list(range(p - 1, n - 1))
                rows += [row] * len(span)
                cols += span
                targets += requests[i].ids[p:n]
                owners += [row] * len(span)
            logprobs = self._token_logprobs(hidden[rows, cols], torch.tensor(targets, device=self.device))
            sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, torch.tensor(owners), logprobs.double().cpu())
            for row, i in enumerate(batch):
                result[i] = -sums[row].item() / (lengths[i] - requests[i].prompt_len)
        return result

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: GenerationParams, seeds: list[int]) -> list[list[Generation]]:
        """Batched sampling. One seed per call (transformers has no per-row generators), so outputs depend on
        the batch: `curate score` calls it on fixed parts, which keeps resumed runs identical."""
        torch.manual_seed(seeds[0] if seeds else params.seed)
        eos = self.tokenizer.eos_token_id
        result: list[list[Generation]] = [[] for _ in prompts]
        lengths = [len(p) for p in prompts]
        for batch in length_batches(lengths, self.batch_tokens // 2):
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
                max_new_tokens=params.max_new_tokens,
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
                tokens = new[k].tolist()
                stop = tokens.index(eos) + 1 if eos in tokens else len(tokens)
                result[batch[k // params.num_samples]].append(Generation(tokens[:stop], chosen[k, :stop].tolist()))
        return result
