"""What several benchmarks share: the embedded pair with the rows of `dolly_dev_1000` encoded as `curate score`
keeps them, and how a result is printed and saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def embedded_dolly(limit: int | None = None, max_seq_len: int = 1024) -> tuple[Path, Path, Any, dict[str, Any]]:
    """The embedded teacher and student directories, their (shared) tokenizer, and the first `limit` rows of
    `dolly_dev_1000` under the Alpaca template that fit `max_seq_len` tokens: {sample_id: Encoded}, in file order."""
    from transformers import AutoTokenizer

    from syllabus.core.models import prepare_default_models
    from syllabus.core.tokens import encode_pair
    from syllabus.curate.data import EMBEDDED, PRESETS, load_samples

    teacher_dir, student_dir = prepare_default_models()
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    samples = load_samples(str(EMBEDDED["dolly_dev_1000"]), PRESETS["minillm"], "alpaca", tokenizer, "train").samples
    encoded = {s.sample_id: encode_pair(tokenizer, s.prompt, s.response, max_seq_len) for s in samples[:limit]}
    return teacher_dir, student_dir, tokenizer, {k: v for k, v in encoded.items() if v.status == "ok"}


def write_result(result: dict[str, Any], out: Path | None) -> None:
    """Print `result` as JSON, and write it to `out` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
