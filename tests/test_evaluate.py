"""`evaluate`: protocol metrics on literal cases, n-gram blocking, and runs + comparisons through the CLI."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
import torch
from matplotlib.container import BarContainer
from typer.testing import CliRunner

from helpers import weights_digest
from syllabus.core.engines.ngram import NGramBlocker, banned_tokens
from syllabus.evaluate.cli import app
from syllabus.evaluate.protocol import extract_final_number, gsm8k_correct, score_row
from syllabus.evaluate.sets import SHIPPED, load_set

runner = CliRunner()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
        ("The answer is 1,250.", "1250"),
        ("#### 3.50", "3.5"),
        ("So x = 12.00 dollars", "12"),
        ("It drops by -4 degrees, then 7.", "7"),
        ("#### -4", "-4"),
        ("no digits here", None),
        ("first 3 then #### 42 and 7", "42"),  # the number after the last ####
    ],
)
def test_gsm8k_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_gsm8k_exact_match_against_real_references():
    gsm = load_set("gsm8k", limit=3)
    first = gsm.rows[0].references[0]
    assert first.rstrip().endswith("#### 18")
    assert gsm8k_correct("... so she makes $18.\n#### 18", first)
    assert not gsm8k_correct("#### 17", first)
    assert score_row("gsm8k_accuracy", "18", gsm.rows[0].references) == 100.0
    assert "#### <number>" in gsm.rows[0].prompt and gsm.metric == "gsm8k_accuracy"


def test_rouge_on_a_multi_reference_sni_row():
    sni = load_set("sni", limit=50)
    row = next(r for r in sni.rows if len(r.references) > 1)
    best = max(range(len(row.references)), key=lambda i: score_row("rouge_l", row.references[i], (row.references[i],)))
    # generating one reference verbatim scores 100: the max over references picks it
    assert score_row("rouge_l", row.references[-1], row.references) == pytest.approx(100.0)
    assert score_row("rouge_l", row.references[best], row.references) == pytest.approx(100.0)
    assert score_row("rouge_l", "zzz qqq", row.references) == 0.0


def test_rouge_on_non_latin_text_follows_rouge_score():
    """rouge-score's default tokenizer keeps only [a-z0-9]: non-Latin text scores 0 even when identical. The papers'
    numbers come from that scorer, so Syllabus keeps its behaviour (documented) rather than silently differing."""
    assert score_row("rouge_l", "北京是中国的首都", ("北京是中国的首都",)) == 0.0
    assert score_row("rouge_l", "Paris 北京", ("Paris",)) == pytest.approx(100.0)


def test_shipped_sets_load_with_their_row_counts():
    counts = {name: len(load_set(name).rows) for name in SHIPPED}
    assert counts == {"dollyeval": 500, "selfinst": 242, "vicunaeval": 80, "sni": 1694, "unni_short": 1050, "gsm8k": 1319}


def test_ngram_blocker_matches_the_plain_definition_and_transformers():
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    rng = random.Random(0)
    for n in (1, 2, 3, 6):
        prompt = [rng.randrange(6) for _ in range(rng.randrange(0, 12))]
        blocker = NGramBlocker(n)
        output: list[int] = []
        for _ in range(25):
            logits = blocker(prompt, output, torch.zeros(6))
            seq = prompt + output
            expected = banned_tokens(seq, n)
            assert {i for i in range(6) if logits[i] == float("-inf")} == expected
            hf = NoRepeatNGramLogitsProcessor(n)(torch.tensor([seq or [0]]), torch.zeros(1, 6)) if seq else None
            if hf is not None:
                assert {i for i in range(6) if hf[0, i] == float("-inf")} == expected
            allowed = [i for i in range(6) if i not in expected]
            if not allowed:
                break
            output.append(rng.choice(allowed))


def eval_args(model, out, *extra):
    return ["run", "--model", str(model), "--out", str(out), "--sets", "dollyeval,sni,gsm8k", "--seeds", "10,20",
            "--limit", "3", "--max-new-tokens", "8", "--engine", "hf", "--quiet", *extra]


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory, tiny_model, tiny_teacher):
    root = tmp_path_factory.mktemp("eval")
    outs = {}
    for name, model in (("a", tiny_model), ("b", tiny_teacher)):
        result = runner.invoke(app, eval_args(model, root / name, "--label", f"model-{name}"))
        assert result.exit_code == 0, result.output
        outs[name] = root / name
    return outs


def test_run_writes_generations_and_summaries(eval_runs, tiny_model):
    out = eval_runs["a"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]["sets"]) == {"dollyeval", "sni", "gsm8k"}
    assert summary["protocol"]["no_repeat_ngram_size"] == 6 and summary["protocol"]["seeds"] == [10, 20]
    for name, s in summary["results"]["sets"].items():
        frames = [pl.read_parquet(out / "generations" / f"{name}-seed{seed}.parquet") for seed in (10, 20)]
        assert all(f.height == 3 for f in frames)
        means = [f["score"].mean() for f in frames]
        assert s["per_seed"] == {"10": pytest.approx(means[0], abs=1e-4), "20": pytest.approx(means[1], abs=1e-4)}
        assert s["mean"] == pytest.approx(sum(means) / 2, abs=1e-4)
        assert all(0 <= v <= 100 for f in frames for v in f["score"])
    assert summary["results"]["average"] == pytest.approx(
        sum(s["mean"] for s in summary["results"]["sets"].values()) / 3, abs=1e-3)
    assert "| **Avg.** |" in (out / "summary.md").read_text()
    assert summary["model"]["weights_sha256"] == weights_digest(tiny_model)


def test_different_seeds_sample_differently(eval_runs):
    out = eval_runs["a"]
    a = pl.read_parquet(out / "generations" / "dollyeval-seed10.parquet")["generation"].to_list()
    b = pl.read_parquet(out / "generations" / "dollyeval-seed20.parquet")["generation"].to_list()
    assert a != b


def test_compare_two_runs(eval_runs, tmp_path, saved_figures):
    result = runner.invoke(app, ["compare", str(eval_runs["a"]), str(eval_runs["b"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "compare.md").read_text()
    assert md.splitlines()[0] == "| model | dollyeval | sni | gsm8k | Avg. |"
    assert "| model-a |" in md and "| model-b |" in md
    rows = list(pl.read_csv(tmp_path / "compare.csv").iter_rows(named=True))
    summary_b = json.loads((eval_runs["b"] / "summary.json").read_text())
    assert rows[1]["avg"] == pytest.approx(summary_b["results"]["average"])
    ax = saved_figures["compare.png"].axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]  # one group per run, one bar per set
    assert [[round(bar.get_height(), 6) for bar in group] for group in bars] == [
        [round(summary["results"]["sets"][s]["mean"], 6) for s in ("dollyeval", "sni", "gsm8k")]
        for summary in (json.loads((eval_runs[k] / "summary.json").read_text()) for k in ("a", "b"))]


def test_compare_refuses_different_protocols(eval_runs, tmp_path, tiny_model):
    other = tmp_path / "other"
    result = runner.invoke(app, eval_args(tiny_model, other, "--no-repeat-ngram-size", "0"))
    assert result.exit_code == 0, result.output
    refused = runner.invoke(app, ["compare", str(eval_runs["a"]), str(other), "--out", str(tmp_path / "c")])
    assert refused.exit_code == 2 and "protocol.no_repeat_ngram_size" in refused.output
    forced = runner.invoke(app, ["compare", str(eval_runs["a"]), str(other), "--out", str(tmp_path / "c"),
                                 "--allow-mismatch"])
    assert forced.exit_code == 0


def test_rerun_resumes_and_other_settings_are_refused(eval_runs, tiny_model):
    out = eval_runs["a"]
    before = (out / "generations" / "sni-seed10.parquet").stat().st_mtime_ns
    again = runner.invoke(app, eval_args(tiny_model, out, "--label", "model-a"))
    assert again.exit_code == 0 and (out / "generations" / "sni-seed10.parquet").stat().st_mtime_ns == before
    refused = runner.invoke(app, eval_args(tiny_model, out, "--max-new-tokens", "9"))
    assert refused.exit_code == 2 and "max_new_tokens" in refused.output


def test_unknown_set_is_a_clear_error(tmp_path, tiny_model):
    result = runner.invoke(app, ["run", "--model", str(tiny_model), "--out", str(tmp_path / "x"), "--sets", "nope",
                                 "--engine", "hf", "--quiet"])
    assert result.exit_code == 2 and "not a shipped set" in result.output
