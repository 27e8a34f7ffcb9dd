"""The transformers engine: the numerical reference in tests, and the fallback where vLLM is missing.

On CPU it is also the faster teacher-forcing engine (bf16 forward on AMX, docs/benchmarks.md), so `curate score`
uses it for the CE passes there by default.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import torch

from syllabus.core.logits import TopK, checked_logit_head, logit_head
from syllabus.core.packing import (
    attention_is_varlen,
    best_fit_rows,
    lay_out,
    packing_is_exact,
    pad_sequences,
    row_budget,
    scored_positions,
)

from .base import Generation, GenerationParams, ScoringRequest

SCORING_PACK_TOKENS = 512  # packed CE rows under sdpa/eager (the fastest packed layout on CPU, docs/benchmarks.md)
LOGIT_CHUNK_TOKENS = 1024  # at most one (chunk, V) fp32 tensor alive while reducing logits to log-probs
GENERATION_BATCH = 16


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch_tokens() -> int:
    """Padded tokens per forward: small batches stay in cache on CPU (measured: 2048 beats 8192 by 40% on a 2-core
    EPYC, docs/benchmarks.md); GPUs want large ones."""
    return 16384 if torch.cuda.is_available() else 2048


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


def token_scores(model: Any, hidden: torch.Tensor, targets: torch.Tensor,
                 topk: int = 0) -> tuple[torch.Tensor, TopK | None]:
    """log q(target | prefix) for (N, H) final hidden states, in token chunks with an fp32 log-softmax; with `topk`
    > 0 also the top K of each position from the same logits (one head pass).

    The logits are the model's own (bias, logit scale and soft-cap included: `core.logits`), as in training. The
    tail is a log-sum-exp over the other ids, not log(1 - top-K mass), which loses every digit when the top K hold
    nearly all of it.
    """
    head = logit_head(model)
    n = targets.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    top = None
    if topk:
        top = TopK(torch.empty((n, topk), dtype=torch.int32, device=hidden.device),
                   torch.empty((n, topk), dtype=torch.float32, device=hidden.device),
                   torch.empty(n, dtype=torch.float32, device=hidden.device))
    for start in range(0, n, LOGIT_CHUNK_TOKENS):
        end = start + LOGIT_CHUNK_TOKENS
        logits = head.logits(hidden[start:end])  # (chunk, V) fp32
        log_z = logits.logsumexp(-1)
        out[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - log_z
        if top is not None:
            values, ids = logits.topk(topk, dim=-1)
            top.ids[start:end] = ids
            top.log_probs[start:end] = values - log_z[:, None]
            top.log_tail[start:end] = logits.scatter_(1, ids, -torch.inf).logsumexp(-1) - log_z
    return out, top


def scoring_pack_tokens(model: Any, padding_free: bool | None, pack_tokens: int) -> int | None:
    """The packed-row budget of a CE pass over `model`, or None for padded, length-sorted batches.

    `padding_free` None (auto) packs where attention is varlen (flash-attention, one row per forward: `row_budget`),
    and pads elsewhere: sdpa and eager attend over each packed row's whole square, and a CE pass's length-sorted
    batches have little padding to remove (5% in parts of 256 Dolly rows at the CPU budget): on CPU packed passes
    measured 0.95x of padded at rows of 512 tokens, 0.8x at 1,024 (docs/benchmarks.md). A model whose attention
    would cross packed samples (`packing_is_exact`) is always scored padded.
    """
    if not (attention_is_varlen(model) if padding_free is None else padding_free):
        return None
    budget = row_budget([model], pack_tokens)
    if not packing_is_exact(model, budget):
        warnings.warn("the model attends across packed samples (its attention does not read packed position ids): "
                      "scoring with padded batches instead", stacklevel=2)
        return None
    return budget


def scoring_forwards(
    sequences: list[list[int]], prompt_lens: list[int], batch_tokens: int, pad_id: int, pack_tokens: int | None
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], tuple[torch.Tensor, ...]]]:
    """The forwards of a scoring pass over every sequence: (indices, model inputs, (rows, cols, targets)).

    Padded (`pack_tokens` None): length-sorted batches of at most `batch_tokens` padded tokens, a row per sequence.
    Packed: sequences end to end in rows of at most `pack_tokens` (`best_fit_rows`), as many rows per forward as
    fit in `batch_tokens`; with `pack_tokens >= batch_tokens` (flash-attention's layout, `core.packing.row_budget`),
    one row of at most `batch_tokens` per forward.
    """
    lengths = [len(s) for s in sequences]
    if pack_tokens is None:
        for batch in length_batches(lengths, batch_tokens):
            batch_sequences = [sequences[i] for i in batch]
            ids, mask = pad_sequences(batch_sequences, pad_id)
            positions = scored_positions(batch_sequences, [prompt_lens[i] for i in batch],
                                         list(range(len(batch))), [0] * len(batch))
            yield batch, {"input_ids": ids, "attention_mask": mask}, positions
        return
    one_row = pack_tokens >= batch_tokens
    rows = best_fit_rows(lengths, min(pack_tokens, batch_tokens))  # fullest first: a forward is as wide as its first
    start = 0
    while start < len(rows):
        width = sum(lengths[i] for i in rows[start])
        end = start + (1 if one_row else max(1, batch_tokens // width))
        batch = [i for row in rows[start:end] for i in row]
        batch_sequences = [sequences[i] for i in batch]
        local = {i: k for k, i in enumerate(batch)}
        packed = lay_out(batch_sequences, [[local[i] for i in row] for row in rows[start:end]], pad_id)
        positions = scored_positions(batch_sequences, [prompt_lens[i] for i in batch], packed.rows, packed.offsets)
        yield batch, {"input_ids": packed.input_ids, "position_ids": packed.position_ids}, positions
        start = end


def response_nll(
    model: Any, requests: list[ScoringRequest], batch_tokens: int, pad_id: int, pack_tokens: int | None = None
) -> list[float]:
    """Mean NLL of ids[prompt_len:] per request, in forwards of at most `batch_tokens` tokens, padded or packed
    (`scoring_forwards`).

    Shared by the scoring engine and the trainer's DA-KD re-scoring (which passes its in-memory student). Packed
    forwards need a model whose attention reads packed position ids (`core.packing.packing_is_exact`).
    """
    return response_scores(model, requests, batch_tokens, pad_id, pack_tokens)[0]


@torch.inference_mode()
def response_scores(
    model: Any, requests: list[ScoringRequest], batch_tokens: int, pad_id: int, pack_tokens: int | None = None,
    topk: int = 0,
) -> tuple[list[float], list[TopK] | None]:
    """`response_nll`, and with `topk` > 0 each request's top-K at its response tokens (one `TopK` per request, on
    the CPU), from the same forward and head pass."""
    for r in requests:  # position prompt_len - 1 predicts the first response token: it must exist
        if not 0 < r.prompt_len < len(r.ids):
            raise ValueError(f"a scoring request needs a prompt and a response (prompt_len {r.prompt_len} of "
                             f"{len(r.ids)} ids); an empty prompt is a rejected row, never a request")
    device = next(model.parameters()).device
    sequences, prompt_lens = [r.ids for r in requests], [r.prompt_len for r in requests]
    result = [0.0] * len(requests)
    tops: list[TopK | None] = [None] * len(requests)
    backbone = model.get_decoder()
    for batch, inputs, (rows, cols, targets) in scoring_forwards(sequences, prompt_lens, batch_tokens, pad_id,
                                                                 pack_tokens):
        hidden = backbone(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).last_hidden_state
        logprobs, top = token_scores(model, hidden[rows, cols], targets.to(device), topk)
        counts = torch.tensor([len(sequences[i]) - prompt_lens[i] for i in batch])
        owners = torch.repeat_interleave(torch.arange(len(batch)), counts)
        sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, owners, logprobs.double().cpu())
        for k, i in enumerate(batch):
            result[i] = -sums[k].item() / counts[k].item()
        if top is not None:  # scored positions run request by request, in batch order
            split = [t.cpu().split(counts.tolist()) for t in top]
            for k, i in enumerate(batch):
                tops[i] = TopK(*(parts[k] for parts in split))
    return result, (tops if topk else None)


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
        **_: Any,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or default_device()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
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
    def generate(self, prompts: list[list[int]], params: GenerationParams, seeds: list[int]) -> list[list[Generation]]:
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
