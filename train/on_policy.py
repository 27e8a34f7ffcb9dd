"""On-policy distillation: part of each optimizer step trains on responses the current student samples.

Two modes (`core/on_policy.py`): `gkd`, below, and `distillm`, DistiLLM's adaptive scheme (`AdaptiveThreshold`,
`ReplayBuffer`, `DistillmState` at the end of this file; the loop's `distillm_responses`).

`gkd` (Agarwal et al. 2024, as the seed papers' GKD base runs it): a share lambda of each step's samples is trained
on a response the student samples for that sample's prompt (temperature 1, top-p 1, top-k off), the rest on the
ground truth. The KD term on a generated response is taken against the live teacher on that very sequence (the
teacher forward runs on the micro-batch as collated, generated rows included), and a generated response carries no
SFT term: its tokens are trained on the divergence alone.

Choices where the papers and peers are silent or differ (docs/methods.md, "On-policy"):
- Per sample, exactly: each optimizer step generates for round(lambda x n) of its n samples, drawn by a generator
  seeded by (seed, epoch, step). TRL's GKDTrainer and DistiLLM flip one coin per micro-batch, which is lambda only on
  average (a 4-step run at lambda 0.5 trains on no generated sample with probability 1/16). The draw is a function
  of the step's position, so a resumed run and a run on more processes draw the same samples, and it needs no state.
- Sampling seeds: each micro-batch's generation is seeded by (seed, epoch, step, its index in the step) inside a
  forked RNG, so training's own randomness (dropout) is the same as in the off-policy run, and 2 processes generate
  what 1 process with grad_accum 2 generates.
- The student samples in eval mode (no dropout) with its KV cache, under the run's autocast.
- EOS is a target where the student produced it: a response is cut after its first EOS, which it keeps (the bug TRL
  fixed in PR #6357, and that DistiLLM still has, strips every EOS when pad = eos). A response that reaches the
  length budget (the table's `max_seq_len` minus the prompt, or `--on-policy-max-new-tokens`) ends there, no EOS.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import random
import struct
from dataclasses import dataclass
from typing import Any

import torch

from syllabus.core.tokens import Encoded


@dataclass(frozen=True)
class OnPolicy:
    """An epoch's on-policy rule: the mode, the share of each step's samples that is generated, and the longest
    generated response (None: the table's length budget)."""

    mode: str = "off"
    share: float = 0.0
    max_new_tokens: int | None = None

    @property
    def active(self) -> bool:
        """Whether the epoch draws generated samples (at share 0 it draws none: the off-policy run, GKD's loss)."""
        return self.mode != "off"


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across Python versions and platforms (no `hash`)."""
    digest = hashlib.sha256(struct.pack(f"<{len(parts)}q", *parts)).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generated_samples(step: list[list[str]], share: float, seed: int, epoch: int, step_index: int) -> set[str]:
    """The samples of an optimizer step (its micro-batches over all ranks) that train on a generated response:
    round(share x n) of its n samples, drawn by a generator seeded by (seed, epoch, step_index)."""
    samples = [s for micro in step for s in micro]
    count = round(share * len(samples))
    if count == 0:
        return set()
    return set(random.Random(_seed(seed, epoch, step_index)).sample(samples, count))


def generation_seed(seed: int, epoch: int, step_index: int, micro_index: int) -> int:
    """The sampling seed of micro-batch `micro_index` of a step (its index among the step's micro-batches over all
    ranks: the same on 1 process with grad_accum 2 as on 2 processes)."""
    return _seed(seed, epoch, step_index, micro_index, 1)


@torch.no_grad()
def sample_responses(model: Any, prompts: list[list[int]], budgets: list[int], eos_id: int, pad_id: int, seed: int,
                     autocast: Any = contextlib.nullcontext) -> list[list[int]]:
    """One response per prompt sampled from `model` (temperature 1, top-p 1, top-k off), at most budgets[i] tokens,
    cut after its first EOS (kept: a target).

    Args:
        model: the Hugging Face causal LM being trained (unwrapped); put in eval mode while it samples.
        prompts: token ids of each prompt.
        budgets: the most tokens each response may have (>= 1).
        eos_id: the token that ends a response, as the ground truth ends with it.
        pad_id: left padding of the batched prompts (only the attention mask decides what is read).
        seed: the sampling seed; the global RNG is forked, so the caller's randomness is left as it was.
        autocast: the training autocast context factory, so generation runs in the run's precision.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: every row's next token is at the same column
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), autocast():
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max(budgets),
                                 eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True)
    finally:
        model.train(was_training)
    return [cut_response(out[row, width:].tolist(), budget, eos_id) for row, budget in enumerate(budgets)]


def cut_response(tokens: list[int], budget: int, eos_id: int) -> list[int]:
    """A generated response as a training target: at most `budget` tokens, ending at its first EOS (kept)."""
    tokens = tokens[:budget]
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def with_response(enc: Encoded, response: list[int], eos_id: int) -> Encoded:
    """The sample with its ground-truth response replaced by a generated one (truncated where it has no EOS)."""
    return Encoded(enc.prompt_ids, response, "ok", truncated=response[-1:] != [eos_id])


# ---------------------------------------------------------------------------------------------------------------
# Generation engines (`--on-policy-engine`): transformers `generate` on the model being trained, or vLLM in this
# process with the student's weights loaded into it every `sync_every` optimizer steps (TRL's colocate mode).


class TransformersSampler:
    """Samples with the model being trained (`sample_responses`): always the current weights, bit-reproducible
    (a killed run resumes bit for bit)."""

    name = "transformers"

    def __init__(self, eos_id: int, pad_id: int, autocast: Any = contextlib.nullcontext) -> None:
        self.eos_id, self.pad_id, self.autocast = eos_id, pad_id, autocast
        self.last_sync: int | None = None  # it needs none: it samples from the model itself

    def sample(self, model: Any, prompts: list[list[int]], budgets: list[int], seed: int, step: int) -> list[list[int]]:
        return sample_responses(model, prompts, budgets, self.eos_id, self.pad_id, seed, self.autocast)

    def close(self) -> None:
        pass


class VLLMSampler:
    """Samples with vLLM running in this process, started on the first generation from the student's directory
    and handed the student's current weights (`VLLMEngine.load_weights`) before a generation once `sync_every`
    optimizer steps have passed since the last load (and at the first generation of a run or of a resumed one).

    Between loads the engine samples from weights up to `sync_every - 1` steps old (TRL's `vllm_sync_frequency`;
    1, the default, loads before every generating step). Each prompt's request is seeded from the micro-batch's
    sampling seed and the prompt's row, so a sample does not depend on what else the engine batches with it; vLLM's
    CPU kernels are not bit-reproducible across runs, so a resumed run samples what an uninterrupted one samples
    only up to that (with `sync_every` > 1 a resumed run also loads at its first step, where the uninterrupted run
    may still have used older weights). The engine holds sequences of up to `max_model_len` tokens (the table's
    length limit); its memory is `memory` (vLLM's gpu_memory_utilization) on a GPU, and on CPU, where that share of
    the RAM would be KV cache taken from training (a 0.3 share slowed the student's steps 2x here), a KV cache for
    `sequences` sequences of that length (one micro-batch: what a generation asks for at once).
    """

    name = "vllm"

    def __init__(self, model_path: str, eos_id: int, max_model_len: int, dtype: str, memory: float, sync_every: int,
                 seed: int, sequences: int) -> None:
        self.model_path, self.eos_id, self.sync_every = model_path, eos_id, sync_every
        self.options = {"dtype": dtype, "max_model_len": max_model_len, "gpu_memory_utilization": memory,
                        "seed": seed, "in_process": True}
        if not torch.cuda.is_available():
            self.options["kv_cache_tokens"] = sequences * max_model_len
        self.engine: Any = None
        self.last_sync: int | None = None  # the optimizer step (steps done) of the last weight load

    def sample(self, model: Any, prompts: list[list[int]], budgets: list[int], seed: int, step: int) -> list[list[int]]:
        """Responses to `prompts` from the engine, loaded with `model`'s weights first when due (`step`: the optimizer
        steps done)."""
        from syllabus.core.engines import GenerationParams, open_engine

        if self.engine is None:
            self.engine = open_engine("vllm", self.model_path, **self.options)
        if self.last_sync is None or step - self.last_sync >= self.sync_every:
            dtype = getattr(torch, self.options["dtype"])
            self.engine.load_weights((name, tensor.detach().to(dtype)) for name, tensor in model.state_dict().items())
            self.last_sync = step
        params = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=max(budgets))
        seeds = [_seed(seed, row) for row in range(len(prompts))]
        generations = self.engine.generate(prompts, params, seeds, budgets)
        return [cut_response(gens[0].token_ids, budget, self.eos_id) for gens, budget in zip(generations, budgets)]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


# ---------------------------------------------------------------------------------------------------------------
# DistiLLM's adaptive off-policy scheme (Ko et al. 2024; `jongwooko/distillm`, finetune.py and distillm/buffer.py),
# the rule of the `distillm` mode (docs/methods.md, "DistiLLM's adaptive off-policy scheme").

THRESHOLD_STEP = 0.1  # finetune.py: `adaptive_threshold += 0.1`, capped at 1
DEFAULT_LOSS_EPS = 0.1  # --loss-eps
DEFAULT_CAPACITY = 1000  # --capacity: the replay buffer's bound


@dataclass
class AdaptiveThreshold:
    """The share of micro-batches that train on student outputs, raised as the validation loss worsens.

    DistiLLM evaluates the student's validation loss every `eval_interval` steps; when it is at least `loss_eps`
    above the reference, the threshold grows by 0.1 (at most 1) and that loss becomes the reference. The reference
    starts as the loss before training and moves only when the threshold grows (as in finetune.py: a loss that falls
    does not lower it). The threshold starts at `--init-threshold`, 0 by default: training starts on the ground
    truth and turns to student outputs only as the validation loss says the student drifts.
    """

    value: float = 0.0
    reference: float | None = None
    loss_eps: float = DEFAULT_LOSS_EPS

    def observe(self, loss: float) -> bool:
        """Take a validation loss; return whether the threshold grew."""
        if self.reference is None:  # the evaluation before the first step
            self.reference = loss
            return False
        if loss >= self.reference + self.loss_eps:
            self.value = min(1.0, round(self.value + THRESHOLD_STEP, 12))
            self.reference = loss
            return True
        return False

    def choose(self, draw: float, progress: float, buffered: int, capacity: int) -> str:
        """What a micro-batch trains on for a uniform `draw` in [0, 1): "generate" (fresh student outputs, pushed
        into the replay buffer), "replay" (a batch drawn from the buffer) or "truth" (the ground truth).

        `progress` is global_step / total steps: fresh outputs take the share threshold x (1 - progress) (DistiLLM's
        default "decreasing" replay ratio), replays the rest of the threshold, and a buffer not yet full is filled
        with fresh outputs instead of replayed."""
        fresh = self.value * (1 - progress)
        if draw < fresh or (draw < self.value and buffered < capacity):
            return "generate"
        return "replay" if draw < self.value else "truth"

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "reference": self.reference, "loss_eps": self.loss_eps}


class ReplayBuffer:
    """The student outputs of earlier steps, at most `capacity` (the oldest leave first, DistiLLM's
    `deque(maxlen=capacity)`), each kept as (sample id, prompt ids, response ids): what a replayed micro-batch
    collates. A draw takes distinct entries uniformly, from the generator it is given (seeded by the step's
    position, so a resumed run draws the same)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, items: list[tuple[str, list[int], list[int]]] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"the replay buffer's capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: collections.deque[tuple[str, list[int], list[int]]] = collections.deque(
            (tuple(item) for item in items), maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    def push(self, entries: list[tuple[str, list[int], list[int]]]) -> None:
        self.items.extend(entries)

    def draw(self, k: int, rng: random.Random) -> list[tuple[str, list[int], list[int]]]:
        """k distinct entries (all of them when the buffer holds fewer)."""
        return rng.sample(list(self.items), min(k, len(self.items)))

    def state(self) -> dict[str, Any]:
        """A JSON-able record, for the run's snapshot."""
        return {"capacity": self.capacity, "items": [list(item) for item in self.items]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ReplayBuffer:
        return cls(state["capacity"], [tuple(item) for item in state["items"]])


@dataclass
class DistillmState:
    """What the distillm mode carries from step to step, and the snapshot keeps: the threshold and the buffer."""

    threshold: AdaptiveThreshold
    buffer: ReplayBuffer

    @classmethod
    def resume(cls, saved: dict[str, Any] | None, init_threshold: float, loss_eps: float,
               capacity: int) -> DistillmState:
        """The state a snapshot saved (`Progress.distillm`), or a fresh one."""
        if saved is None:
            return cls(AdaptiveThreshold(init_threshold, None, loss_eps), ReplayBuffer(capacity))
        return cls(AdaptiveThreshold(**saved["threshold"]), ReplayBuffer.from_state(saved["buffer"]))

    def state(self) -> dict[str, Any]:
        return {"threshold": self.threshold.state(), "buffer": self.buffer.state()}


def micro_batch_draw(seed: int, epoch: int, step_index: int, micro_index: int) -> random.Random:
    """The generator of a distillm micro-batch's choice and replay draw (by its position: resumed runs agree)."""
    return random.Random(_seed(seed, epoch, step_index, micro_index, 2))


def validation_requests(tokenizer: Any, eval_set: Any, template: str, max_seq_len: int) -> list[Any]:
    """The validation rows as scoring requests: each row's templated prompt and first reference, tokenised as
    training rows are (cut to `max_seq_len` where longer, as the MiniLLM evaluation cuts prompts)."""
    from syllabus.core.engines.base import ScoringRequest
    from syllabus.core.tokens import encode_pair

    requests = []
    for row in eval_set.rows:
        enc = encode_pair(tokenizer, row.templated(template, tokenizer), row.references[0], max_seq_len,
                          truncate=True, chat_template=template == "chat")
        if enc.prompt_ids and enc.response_ids:
            requests.append(ScoringRequest(enc.ids, len(enc.prompt_ids)))
    return requests
