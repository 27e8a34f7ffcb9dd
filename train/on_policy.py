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
    responses = []
    for row, budget in enumerate(budgets):
        tokens = out[row, width:].tolist()[:budget]
        if eos_id in tokens:
            tokens = tokens[: tokens.index(eos_id) + 1]
        responses.append(tokens)
    return responses


def with_response(enc: Encoded, response: list[int], eos_id: int) -> Encoded:
    """The sample with its ground-truth response replaced by a generated one (truncated where it has no EOS)."""
    return Encoded(enc.prompt_ids, response, "ok", truncated=response[-1:] != [eos_id])


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
