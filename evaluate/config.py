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
