"""Scoring an in-memory causal LM: the mean NLL of each response, and its top-K, in padded or packed forwards.

One home for the teacher-forcing pass that `curate score`'s transformers engine (`core.engines.hf_engine`) runs
over a loaded checkpoint and that the trainer's DA-KD re-scoring (`train.rescore`) runs over the student being
trained, FSDP-sharded or not: neither reaches into the other.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import torch

from syllabus.core.engines.base import ScoringRequest
from syllabus.core.logits import TopK, logit_head
from syllabus.core.packing import (
    attention_is_varlen,
    best_fit_rows,
    lay_out,
    packing_is_exact,
    pad_sequences,
    row_budget,
    scored_positions,
)

SCORING_PACK_TOKENS = 512  # packed CE rows under sdpa/eager (the fastest packed layout on CPU, docs/benchmarks.md)
LOGIT_CHUNK_TOKENS = 1024  # at most one (chunk, V) fp32 tensor alive while reducing logits to log-probs


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
