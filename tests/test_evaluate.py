"""`evaluate`: protocol metrics on literal cases, n-gram blocking, and runs + comparisons through the CLI."""

from __future__ import annotations

import json
import random
import re
import shutil
from types import SimpleNamespace

import polars as pl
import pytest
import torch
from matplotlib.container import BarContainer
from typer.testing import CliRunner

from helpers import weights_digest
from syllabus.core.engines.ngram import NGramBlocker, banned_tokens
from syllabus.evaluate.cli import app
from syllabus.evaluate.protocol import EvalProtocol, extract_final_number, gsm8k_correct, score_row
from syllabus.evaluate.run import set_prompts
from syllabus.evaluate.sets import SHIPPED, EvalSetError, load_set

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


MINILLM_ROW = json.dumps({"prompt": "Name a colour.", "output": "Blue."})
GSM8K_ROW = json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})


def write_set(path, *lines: str | bytes):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "lines, message",
    [
        ((GSM8K_ROW, MINILLM_ROW), ":2: a MiniLLM row in a set whose first row (line 1) is a GSM8K row"),
        ((MINILLM_ROW, "", GSM8K_ROW), ":3: a GSM8K row in a set whose first row (line 1) is a MiniLLM row"),
        ((GSM8K_ROW, json.dumps({"question": "1 + 1?", "answer": 2})), ":2: field `answer` is a JSON number"),
        ((json.dumps({"question": "1 + 1?", "answer": "two"}),), ":1: field `answer` holds no number"),
        ((json.dumps({"question": "", "answer": "#### 2"}),), ":1: field `question` is empty"),
        ((json.dumps({"prompt": ["Name a colour."], "output": "Blue."}),), ":1: field `prompt` is a JSON array"),
        ((json.dumps({"prompt": "Name a colour.", "output": []}),), ":1: field `output` is an empty list"),
        ((json.dumps({"prompt": "Name a colour.", "output": ["Blue.", 7]}),),
         ":1: reference 2 of field `output` is a JSON number"),
        ((json.dumps({"prompt": "Name a colour."}),), ":1: no field `output`"),
        ((MINILLM_ROW, MINILLM_ROW, json.dumps({"prompt": "x", "output": None})),  # past --limit 1: still checked
         ":3: field `output` is a JSON null"),
    ],
)
def test_every_eval_set_row_must_be_of_the_sets_kind_with_text_fields(tmp_path, lines, message):
    path = write_set(tmp_path / "mine.jsonl", *lines)
    with pytest.raises(EvalSetError) as info:
        load_set(str(path), limit=1)
    text = str(info.value)
    assert text.startswith(f"{path}{message}") and ("remove the row" in text or "a file of its own" in text), text


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", ":2: the line is a JSON array, not an object"),
        ('"Name a colour."', ":2: the line is a JSON string, not an object"),
        ('{"prompt": "Name a colour.", ', ":2: malformed JSON (Expecting property name"),
        ('{"prompt": "caf\xe9", "output": "x"}'.encode("latin-1"), ":2: not UTF-8 text (byte 0xe9 at column 16)"),
    ],
)
def test_eval_set_lines_that_are_not_json_objects_name_their_line(tmp_path, line, message):
    path = write_set(tmp_path / "mine.jsonl", MINILLM_ROW, line)
    with pytest.raises(EvalSetError, match="^" + re.escape(f"{path}{message}")):
        load_set(str(path))


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_an_empty_prompt_is_refused_before_anything_runs(tmp_path, tiny_model, prompt):
    path = write_set(tmp_path / "mine.jsonl", MINILLM_ROW, json.dumps({"prompt": prompt, "output": "Blue."}))
    result = runner.invoke(app, eval_args(tiny_model, tmp_path / "out", "--sets", str(path)))
    assert result.exit_code == 2, result.output
    assert f"{path}:2: field `prompt` is empty" in result.output and not (tmp_path / "out").exists()


def test_a_prompt_of_no_tokens_is_named_by_its_line(tmp_path):
    eval_set = load_set(str(write_set(tmp_path / "mine.jsonl", MINILLM_ROW, MINILLM_ROW)))

    def tokenizer(text, add_special_tokens=True):  # a tokenizer that drops every character of the second prompt
        return SimpleNamespace(input_ids=[] if text is eval_set.rows[1].prompt else [1, 2])

    with pytest.raises(EvalSetError, match=re.escape(f"{eval_set.path}:2: the prompt encodes to no token")):
        set_prompts(eval_set, tokenizer, EvalProtocol())


def test_two_set_files_with_one_name_are_refused(tmp_path, tiny_model):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_set(tmp_path / "a" / "mine.jsonl", MINILLM_ROW)
    second = write_set(tmp_path / "b" / "mine.jsonl", GSM8K_ROW)
    result = runner.invoke(app, eval_args(tiny_model, tmp_path / "out", "--sets", f"{first},{second}"))
    assert result.exit_code == 2 and f"{first} and {second} would both be reported as set 'mine'" in result.output


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: text[: len(text) // 2], "summary.json:"),  # a truncated file: line number of the fault
        (lambda text: "[]", "summary.json: not an `evaluate run` summary (no label, limit, protocol, results"),
        (lambda text: "\xff", "summary.json: damaged, not UTF-8 text"),  # one byte 0xff (written as latin-1)
    ],
)
def test_compare_names_a_damaged_summary_and_the_remedy(eval_runs, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(eval_runs["b"], broken)
    text = (broken / "summary.json").read_text()
    (broken / "summary.json").write_bytes(damage(text).encode("latin-1"))
    result = runner.invoke(app, ["compare", str(eval_runs["a"]), str(broken), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert f"{broken / message}" in result.output and f"`evaluate run` command with --out {broken}" in result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--limit", "0"), "--limit must be >= 1, got 0"),
        (("--seeds", "10,x"), "parameter seeds: expected comma-separated integers, got '10,x'"),
        (("--seeds", "10,20,10"), "--seeds repeats 10; give each seed once"),
        (("--dtype", "float33"), "'float33' is not one of 'auto',"),
        (("--temperature", "-1"), "temperature must be >= 0"),
        (("--top-p", "0"), "top_p must be in (0, 1]"),
        (("--no-repeat-ngram-size", "-1"), "no_repeat_ngram_size must be >= 0"),
    ],
)
def test_run_refuses_bad_arguments_before_claiming_the_output(tmp_path, tiny_model, extra, message):
    result = runner.invoke(app, eval_args(tiny_model, tmp_path / "out", *extra))
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()  # a corrected re-run into the same --out is not refused as another run


def test_run_refuses_a_model_dir_that_is_no_model_and_an_out_that_is_a_file(tmp_path, tiny_model):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no model here")
    result = runner.invoke(app, eval_args(tmp_path / "notes", tmp_path / "out"))
    assert result.exit_code == 2 and "holds no config.json" in result.output
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, eval_args(tiny_model, tmp_path / "file"))
    assert result.exit_code == 2 and f"--out {tmp_path / 'file'} is a file" in result.output
    result = runner.invoke(app, eval_args(tiny_model, tmp_path / "out", "--sets", str(tmp_path)))
    assert result.exit_code == 2 and f"{tmp_path}: is a directory" in result.output


def test_compare_refuses_an_out_that_is_a_file_and_a_wrong_label_count(eval_runs, tmp_path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["compare", str(eval_runs["a"]), "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file; give a directory" in result.output
    result = runner.invoke(app, ["compare", str(eval_runs["a"]), str(eval_runs["b"]), "--labels", "x",
                                 "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "1 labels for 2 runs; give one --labels name per run" in result.output


def test_templates_rebuild_each_shipped_prompt_or_apply_the_chat_template(real_tokenizer_dir):
    from transformers import AutoTokenizer

    from syllabus.evaluate.sets import SHIPPED

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    for name in SHIPPED:
        for row in load_set(name).rows:
            assert row.instruction  # every shipped row keeps the instruction its prompt was made from
            assert row.templated("alpaca", tokenizer) == row.templated("none", tokenizer) == row.prompt, name
            chat = row.templated("chat", tokenizer)
            assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
            assert row.instruction in chat and "### Instruction" not in chat


def test_a_chat_template_run_is_recorded_and_not_compared_with_alpaca_runs(eval_runs, tmp_path, tiny_model):
    out = tmp_path / "chat"
    result = runner.invoke(app, eval_args(tiny_model, out, "--template", "chat", "--label", "chat"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["protocol"]["template"] == "chat"
    assert "template" not in json.loads((eval_runs["a"] / "summary.json").read_text())["protocol"]  # as before
    refused = runner.invoke(app, ["compare", str(eval_runs["a"]), str(out), "--out", str(tmp_path / "cmp")])
    assert refused.exit_code == 2 and "differs in: protocol" in refused.output
