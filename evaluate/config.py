"""`evaluate run` settings: one frozen, validated dataclass (light to import: the CLI makes its options from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from syllabus.core import settings
from syllabus.core.config import check_choices, setting
from syllabus.core.settings import check_placement

from .protocol import EvalProtocol
from .sets import DEFAULT_SETS


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Everything an evaluation run depends on. `evaluate run`'s options and its `--config` YAML keys are these
    fields (the sampling protocol's may also go under `protocol:` in YAML)."""

    model: str = setting(help="model directory, hub id, or default-student / default-teacher (the embedded pair)")
    out: str = setting(help="run directory (resumed if it holds this same run)", flags=("--out", "-o"), path=True)
    sets: tuple[str, ...] = setting(DEFAULT_SETS, "comma-separated shipped set names (also gsm8k) or jsonl paths")
    limit: int | None = setting(None, "first N rows of each set (a reduced run; recorded)")
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    engine: str = settings.engine()
    dtype: str = settings.dtype()  # resolved when evaluating starts (core/precision.py)
    attention: str = settings.attention()
    batch_tokens: int | None = setting(None, "padded tokens per transformers forward",
                                       shown="2048 on CPU, 16384 on GPU")
    label: str | None = setting(None, "name of this model in comparisons", shown="--model as given")
    overwrite: bool = setting(False, "replace OUT if it holds a different run")
    allow_code_execution: bool = setting(False, "run the code the model writes for code sets (humaneval), each "
                                         "program in a sandbox (evaluate/sandbox.py): model code is untrusted "
                                         "code, so nothing runs without this")
    tensor_parallel_size: int = settings.tensor_parallel_size()
    backend: str = settings.backend()  # where the (set, seed) jobs run (core/backends.py)
    ray_address: str | None = settings.ray_address()
    replicas: int | None = settings.replicas()

    def __post_init__(self) -> None:
        check_choices(self, ValueError)
        check_placement(self, ValueError)
        if not self.sets:
            raise ValueError("--sets is empty")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """`evaluate judge`'s settings (the two runs are its arguments): where judgments go, the judge, and how it is
    asked."""

    out: str = setting(help="directory for judgments.jsonl (resumed), judge.json and judge.md", flags=("--out", "-o"),
                       path=True)
    judge_model: str = setting(help="the judge: its model name at --judge-url, or without it a model directory, hub "
                               "id or default-teacher (the embedded one: a tiny judge, a check of the machinery) "
                               "run here (vLLM where installed, else transformers)")
    judge_url: str | None = setting(None, "OpenAI-compatible API root of the judge, e.g. http://localhost:8000/v1 "
                                    "(`vllm serve MODEL`) or a hosted API's", shown="none: the judge runs here")
    judge_api_key_env: str | None = setting(None, "environment variable holding the API key")
    judge_temperature: float = setting(0.0, "the judge's sampling temperature (0: greedy, as MT-bench; SpectrumKD "
                                       "used 0.7)")
    max_tokens: int = setting(1024, "longest judgment in tokens")
    seeds: tuple[int, ...] = setting(help="comma-separated seeds whose generations are judged", factory=tuple,
                                     shown="the first of run A's protocol")
    concurrency: int = setting(8, "judge requests in flight at once")
    timeout_s: float = setting(120.0, "seconds per judge request")
    retries: int = setting(4, "retries of a failed request, with exponential backoff (1, 2, 4, ... s)")
    tensor_parallel_size: int = settings.tensor_parallel_size()  # a judge run here

    def __post_init__(self) -> None:
        if min(self.concurrency, self.max_tokens, self.tensor_parallel_size) < 1 or self.retries < 0 or \
                self.timeout_s <= 0 or self.judge_temperature < 0:
            raise ValueError("--concurrency, --max-tokens and --tensor-parallel-size must be >= 1, --retries and "
                             "--judge-temperature >= 0, --timeout-s > 0")
