"""Input loading: presets, templates, sample ids, and every bad-input case."""

from __future__ import annotations

import json

import polars as pl
import pytest

from syllabus.curate.data import PRESETS, DataError, load_samples, make_sample_id


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_alpaca_template_reproduces_minillm_prompts(dolly_rows, tmp_path):
    """Our Alpaca template rebuilt from instruction/input equals MiniLLM's own `prompt` field, row for row."""
    src = write_jsonl(tmp_path / "d.jsonl", dolly_rows[:200])
    loaded = load_samples(str(src), PRESETS["minillm"], template="alpaca")
    assert [s.prompt for s in loaded.samples] == [r["prompt"] for r in dolly_rows[:200]]
    verbatim = load_samples(str(src), PRESETS["minillm"], template="none")
    assert [s.sample_id for s in verbatim.samples] == [s.sample_id for s in loaded.samples]


def test_dolly_preset_maps_context_and_response(tmp_path):
    src = write_jsonl(tmp_path / "raw.jsonl", [
        {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "Cats sleep a lot.", "response": "Cats sleep.", "category": "summarization"},
    ])
    loaded = load_samples(str(src), PRESETS["dolly"], template="alpaca")
    assert loaded.samples[0].prompt.endswith("### Instruction:\nName a colour.\n\n### Response:\n")
    assert "### Input:\nCats sleep a lot." in loaded.samples[1].prompt
    assert loaded.samples[1].response == "Cats sleep."
    assert loaded.samples[1].extra == {"category": "summarization"}


def test_chat_template_uses_the_tokenizer(tmp_path, real_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say hi.", "input": "", "output": "Hi!"}])
    sample = load_samples(str(src), PRESETS["minillm"], template="chat", tokenizer=tok).samples[0]
    assert sample.prompt.startswith("<|im_start|>system") and sample.prompt.endswith("<|im_start|>assistant\n")
    assert "Say hi." in sample.prompt


def test_sample_id_is_stable_and_content_addressed():
    a = make_sample_id("Prompt  text\n", "The answer.")
    assert a == make_sample_id("Prompt text", "  The answer. ")  # whitespace-normalised
    assert a != make_sample_id("Prompt text", "The answer!")
    assert a != make_sample_id("The answer.", "Prompt text")  # order matters
    assert len(a) == 16 and int(a, 16) >= 0


def test_sample_id_does_not_depend_on_row_order(tmp_path, dolly_rows):
    fwd = load_samples(str(write_jsonl(tmp_path / "a.jsonl", dolly_rows[:30])), PRESETS["minillm"])
    rev = load_samples(str(write_jsonl(tmp_path / "b.jsonl", dolly_rows[:30][::-1])), PRESETS["minillm"])
    assert {s.sample_id: s.prompt for s in fwd.samples} == {s.sample_id: s.prompt for s in rev.samples}


def test_list_references_keep_all_and_score_the_first(tmp_path):
    src = write_jsonl(tmp_path / "sni.jsonl", [{"prompt": "P", "instruction": "I", "input": "", "output": ["first", "second"]}])
    s = load_samples(str(src), PRESETS["minillm"]).samples[0]
    assert s.response == "first" and s.references == ("first", "second")


def test_bad_rows_are_rejected_with_file_line_field_and_reason(tmp_path):
    good = {"instruction": "Q?", "input": "", "output": "A."}
    src = write_jsonl(tmp_path / "mixed.jsonl", [
        good,
        '{"instruction": "broken", ',                      # line 2: malformed JSON
        {"input": "", "output": "no instruction"},         # line 3: missing field
        {"instruction": "Q2?", "input": "", "output": "  "},  # line 4: empty response
        {"instruction": "Q3?", "input": "", "output": 7},  # line 5: non-text response
        "[1, 2]",                                          # line 6: not an object
        good,                                              # line 7: duplicate of line 1
    ])
    loaded = load_samples(str(src), PRESETS["minillm"])
    assert len(loaded.samples) == 1 and loaded.duplicates == 1
    by_line = {r.source_line: r for r in loaded.rejects}
    assert set(by_line) == {2, 3, 4, 5, 6, 7}
    assert "malformed JSON" in by_line[2].reason
    assert by_line[3].field == "instruction" and "missing" in by_line[3].reason
    assert by_line[4].field == "output" and by_line[4].reason == "empty response"
    assert by_line[5].field == "output"
    assert "JSON object" in by_line[6].reason
    assert "duplicate of" in by_line[7].reason and ":1" in by_line[7].reason
    assert all(r.source_file == str(src) for r in loaded.rejects)


def test_no_usable_row_is_an_error_quoting_the_first_rejects(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", ['{"oops"', {"instruction": "x", "output": ""}])
    with pytest.raises(DataError, match=r"no usable row.*bad.jsonl:1: malformed JSON"):
        load_samples(str(src), PRESETS["minillm"])


def test_missing_path_and_unknown_template_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_samples(str(tmp_path / "nope.jsonl"), PRESETS["minillm"])
    with pytest.raises(DataError, match="unknown template"):
        load_samples(str(tmp_path), PRESETS["minillm"], template="vicuna")
    with pytest.raises(DataError, match="needs a tokenizer"):
        load_samples(str(tmp_path), PRESETS["minillm"], template="chat")


def test_json_csv_parquet_and_directories(tmp_path, dolly_rows):
    rows = [{k: r[k] for k in ("instruction", "input", "output")} for r in dolly_rows[:6]]
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.json").write_text(json.dumps(rows[:2]))
    pl.DataFrame(rows[2:4]).write_csv(d / "b.csv")
    pl.DataFrame(rows[4:]).write_parquet(d / "c.parquet")
    (d / "notes.txt").write_text("ignored")
    loaded = load_samples(str(d), PRESETS["minillm"])
    assert [s.response for s in loaded.samples] == [r["output"] for r in rows]
    assert loaded.samples[2].source_line == 2  # csv lines count the header
    assert len(loaded.files) == 3


def test_embedded_default_dataset_resolves_by_name():
    loaded = load_samples("dolly_dev_1000", PRESETS["minillm"])
    assert len(loaded.samples) + loaded.duplicates == 1000
