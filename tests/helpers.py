"""Test helpers importable from test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tiny_llama(tokenizer_dir: Path, out: Path, seed: int, layers: int = 2, dropout: float = 0.0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        attention_dropout=dropout,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def weights_digest(model_dir: Path) -> str:
    """sha256 over a model's weight files (name, then bytes, in name order), computed here as an oracle."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def short_rows(dolly_rows, n):
    """The first n Dolly rows of under 500 characters: short training runs."""
    return [r for r in dolly_rows if len(r["prompt"]) + len(r["output"]) < 500][:n]


def full_run_args(table, tmp_path, student, teacher, out, *extra):
    """`train run` on a one-epoch full-data schedule of `table` (built in tmp_path/schedule), micro-batch 4."""
    from syllabus.curate.schedules.build import build_schedule

    manifest, _ = build_schedule(table.path, "full", tmp_path / "schedule", {"epochs": 1})
    return ["run", "--manifest", str(manifest), "--out", str(out), "--student", str(student), "--teacher",
            str(teacher), "--micro-batch-size", "4", *extra]


def scored_table(tmp_path, rows, max_seq_len, tokenizer_dir, truncate=False):
    """A table as `curate score` writes it: token counts from the scoring tokenisation, the limit in its metadata;
    the scores are random."""
    import numpy as np
    import polars as pl
    from transformers import AutoTokenizer

    from syllabus.core.table import write_table
    from syllabus.core.tokens import encode_pair
    from syllabus.curate.data import make_sample_id

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoded = [encode_pair(tok, r["prompt"], r["output"], max_seq_len, truncate) for r in rows]
    rng = np.random.default_rng(0)
    student_ce, teacher_ce = rng.uniform(1, 4, len(rows)), rng.uniform(0.5, 2, len(rows))
    frame = pl.DataFrame({
        "sample_id": [make_sample_id(r["prompt"], r["output"]) for r in rows],
        "prompt": [r["prompt"] for r in rows], "response": [r["output"] for r in rows],
        "prompt_tokens": [len(e.prompt_ids) for e in encoded],
        "response_tokens": [len(e.response_ids) for e in encoded],
        "student_ce": student_ce, "teacher_ce": teacher_ce, "dds": student_ce / teacher_ce,
        "rouge_l": rng.uniform(0, 1, len(rows)), "output_ce": rng.uniform(0, 3, len(rows)),
        "status": [e.status for e in encoded],
    })
    metadata = {"kind": "difficulty_table", "template": "alpaca", "config": {"max_seq_len": max_seq_len,
                                                                             "truncate": truncate}}
    return write_table(frame, tmp_path / f"table-{max_seq_len}-{truncate}", metadata)
