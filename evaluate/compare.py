"""`evaluate compare`: several evaluation runs in one table, in the papers' layout, plus a bar chart."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from syllabus.core.io import atomic_write_bytes
from syllabus.core.workdir import differences

SUMMARY_FIELDS = ("label", "limit", "protocol", "results")  # what a comparison reads of a summary
RESULT_FIELDS = ("sets", "order", "average")


class CompareError(ValueError):
    """Runs that cannot be compared (missing or damaged summary, or different protocols without --allow-mismatch)."""


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The summary.json of one finished evaluation run.

    Raises:
        CompareError: it is missing, or damaged (not JSON, or without the fields `evaluate run` writes).
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        raise CompareError(f"{run_dir}: no summary.json; is it a finished `evaluate run` directory?")
    rerun = f"re-run the same `evaluate run` command with --out {run_dir} (it keeps finished generations) to rewrite it"
    try:
        summary = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}:{exc.lineno}: damaged, malformed JSON ({exc.msg}); {rerun}") from None
    except UnicodeDecodeError:
        raise CompareError(f"{path}: damaged, not UTF-8 text; {rerun}") from None
    fields = summary if isinstance(summary, dict) else {}
    results = fields["results"] if isinstance(fields.get("results"), dict) else {}
    missing = [k for k in SUMMARY_FIELDS if k not in fields]
    missing += [f"results.{k}" for k in RESULT_FIELDS if k not in results]
    if missing:
        raise CompareError(f"{path}: not an `evaluate run` summary (no {', '.join(missing)}); {rerun}")
    return summary


def comparable_key(summary: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two runs to share a table: protocol, set contents and row limit."""
    return {
        "protocol": summary["protocol"],
        "limit": summary["limit"],
        "sets": {name: s["sha256"] for name, s in summary["results"]["sets"].items()},
    }


def load_judgments(judged: list[Path]) -> list[dict[str, Any]]:
    """The judge.json of each `evaluate judge` output directory.

    Raises:
        CompareError: one is missing or damaged.
    """
    out = []
    for directory in judged:
        path = directory / "judge.json"
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            raise CompareError(f"--judged {directory}: no readable judge.json; is it an `evaluate judge` --out "
                               "directory?") from None
    return out


def compare_runs(run_dirs: list[Path], out: Path, labels: list[str] | None = None, allow_mismatch: bool = False,
                 judged: list[Path] | None = None) -> str:
    """Write compare.md, compare.csv and compare.png into `out`; return the Markdown table. With `judged`
    (`evaluate judge` output directories), a WR column per opponent: each run's overall win rate where a judgment
    of it exists.

    Raises:
        CompareError: a run has no readable summary, `out` is a file, protocols/sets differ and `allow_mismatch`
            is off, or a judged directory holds no judge.json.
    """
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file; give a directory for compare.md, compare.csv and compare.png")
    summaries = [load_summary(d) for d in run_dirs]
    if labels is not None and len(labels) != len(summaries):
        raise CompareError(f"{len(labels)} labels for {len(summaries)} runs; give one --labels name per run, in order")
    names = labels or [s["label"] for s in summaries]
    reference = comparable_key(summaries[0])
    for run_dir, summary in zip(run_dirs[1:], summaries[1:]):
        diff = differences(reference, comparable_key(summary))
        if diff and not allow_mismatch:
            raise CompareError(
                f"{run_dir} was evaluated under another protocol than {run_dirs[0]} (differs in: {', '.join(diff)}); "
                "its numbers are not comparable. Pass --allow-mismatch to put them in one table anyway."
            )
    sets = list(dict.fromkeys(name for s in summaries for name in s["results"]["order"]))
    judgments = load_judgments(judged or [])
    opponents = list(dict.fromkeys(j["b"] for j in judgments))
    win_rate = {(Path(j["runs"][0]).resolve(), j["b"]): j["results"]["overall"]["wr"] for j in judgments}
    header = ["model", *sets, "Avg.", *[f"WR vs {b}" for b in opponents]]
    rows, wrs = [], []
    for name, summary, run_dir in zip(names, summaries, run_dirs):
        cells = []
        for set_name in sets:
            r = summary["results"]["sets"].get(set_name)
            cells.append(None if r is None else (r["mean"], r["std"]))
        rows.append((name, cells, summary["results"]["average"]))
        wrs.append([win_rate.get((Path(run_dir).resolve(), b)) for b in opponents])
    one_seed = max(len(s["protocol"]["seeds"]) for s in summaries) == 1  # a spread over one seed says nothing
    md = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for (name, cells, avg), wr in zip(rows, wrs):
        rendered = ["-" if c is None else f"{c[0]:.2f}" if one_seed else f"{c[0]:.2f} ± {c[1]:.2f}" for c in cells]
        rendered += [f"{avg:.2f}", *["-" if w is None else f"{w:.1f}" for w in wr]]
        md.append(f"| {name} | " + " | ".join(rendered) + " |")
    note = ("Scores x100 (ROUGE-L F1, GSM8K accuracy or code pass@1); one seed, so no spread across seeds." if one_seed else
            "Scores x100 (ROUGE-L F1, GSM8K accuracy or code pass@1); mean over seeds ± std across seeds.")
    if "unni_short" in sets:
        note += " `unni_short` is a 1-2 word-answer subset of UnNI, not the papers' 10k set."
    for judge in dict.fromkeys(json.dumps(j["judge"], sort_keys=True) for j in judgments):
        who = json.loads(judge)
        note += (f" WR: pairwise win rate x100 over all judged pairs, ties apart (MT-bench's judge, both orders), "
                 f"judged by {who.get('model') or who.get('name')}.")
    markdown = "\n".join(md) + "\n\n" + note + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", *[f"{s}_{k}" for s in sets for k in ("mean", "std")], "avg",
                     *[f"wr_vs_{b}" for b in opponents]])
    for (name, cells, avg), wr in zip(rows, wrs):
        writer.writerow([name, *[v for c in cells for v in (c if c else ("", ""))], avg,
                         *["" if w is None else w for w in wr]])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "compare.md", markdown.encode())
    atomic_write_bytes(out / "compare.csv", buf.getvalue().encode())
    _bar_chart(out / "compare.png", sets, rows, one_seed)
    return markdown


def _bar_chart(path: Path, sets: list[str], rows: list[tuple[str, list, float]], one_seed: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(sets))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sets) + 2), 4.5))
    for k, (name, cells, avg) in enumerate(rows):
        means = [c[0] if c else np.nan for c in cells]
        stds = [c[1] if c else 0 for c in cells]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, means, width, yerr=None if one_seed else stds, capsize=3,
               label=f"{name} (avg {avg:.1f})")
    ax.set_xticks(x, sets)
    ax.set_ylabel("score x100 (ROUGE-L F1 / accuracy)")
    ax.set_title("Evaluation: one seed (no spread)" if one_seed else
                 "Evaluation: mean over seeds, error bars = std across seeds")
    ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
