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
    assert "not an object" in by_line[6].reason
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


def test_a_blank_prompt_is_a_rejected_row(tmp_path, real_tokenizer_dir):
    """An empty prompt leaves no position to predict the first response token from: no engine may see one."""
    from transformers import AutoTokenizer

    src = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Say hi.", "output": "Hi!"},
        {"prompt": "", "output": "Hello."},     # line 2: empty
        {"prompt": " \n\t", "output": "Hey."},  # line 3: whitespace only
    ])
    loaded = load_samples(str(src), PRESETS["minillm"], template="none")
    assert [s.source_line for s in loaded.samples] == [1]
    assert [(r.source_line, r.field) for r in loaded.rejects] == [(2, "prompt"), (3, "prompt")]
    assert all("empty" in r.reason for r in loaded.rejects)
    # The chat template falls back to a ready prompt when the instruction is empty, but not to a blank one.
    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    chat = load_samples(str(src), PRESETS["minillm"], template="chat", tokenizer=tok)
    assert [s.source_line for s in chat.samples] == [1] and len(chat.rejects) == 2


def test_a_field_named_by_flag_must_exist_in_the_data(tmp_path, dolly_rows):
    src = write_jsonl(tmp_path / "d.jsonl", dolly_rows[:3])
    for role, name in (("input", "contxt"), ("instruction", "instrction"), ("response", "outptu")):
        with pytest.raises(DataError, match=rf"no row has the field '{name}' \(--{role}-field\).*'instruction', "
                                            r"'prompt', 'input', 'output'"):
            load_samples(str(src), PRESETS["minillm"], named_fields={role: name})
    # Named and present: fine. A preset's default the data lacks (no `input` column here): fine.
    named = load_samples(str(src), PRESETS["minillm"], named_fields={"input": "input"})
    assert len(named.samples) == 3
    no_input = write_jsonl(tmp_path / "n.jsonl", [{"instruction": "Q?", "output": "A."}])
    assert len(load_samples(str(no_input), PRESETS["minillm"]).samples) == 1


def test_suffixes_in_any_case_are_read_and_other_files_reported(tmp_path, dolly_rows):
    rows = [{k: r[k] for k in ("instruction", "input", "output")} for r in dolly_rows[:3]]
    d = tmp_path / "dir"
    d.mkdir()
    write_jsonl(d / "a.JSONL", rows[:1])
    (d / "b.Json").write_text(json.dumps(rows[1:2]))
    pl.DataFrame(rows[2:]).write_csv(d / "c.CSV")
    (d / "README.md").write_text("about the data")
    (d / "._a.JSONL").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: hidden, neither read nor listed
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    loaded = load_samples(str(d), PRESETS["minillm"])
    assert [s.response for s in loaded.samples] == [r["output"] for r in rows]
    assert loaded.skipped_files == [str(d / "README.md")]
    for name in ("a.JSONL", "b.Json", "c.CSV"):
        (d / name).unlink()
    with pytest.raises(DataError, match="holds no .jsonl.*README.md"):
        load_samples(str(d), PRESETS["minillm"])


def test_undecodable_bytes_bom_blank_and_non_object_lines_reject_only_their_line(tmp_path):
    good = json.dumps({"instruction": "Q?", "input": "", "output": "A."}).encode()
    src = tmp_path / "bytes.jsonl"
    src.write_bytes(b"\n".join([
        b"\xef\xbb\xbf" + good,                                             # line 1: UTF-8 BOM, read
        b'{"instruction": "caf\xe9?", "input": "", "output": "Latin-1."}',  # line 2: not UTF-8
        b"",                                                                # line 3: blank
        b'"just a string"',                                                 # line 4: not an object
        json.dumps({"instruction": "Q2?", "input": "", "output": "B."}).encode(),
    ]) + b"\n")
    loaded = load_samples(str(src), PRESETS["minillm"])
    assert [s.source_line for s in loaded.samples] == [1, 5]
    by_line = {r.source_line: r.reason for r in loaded.rejects}
    assert set(by_line) == {2, 3, 4}
    assert "not UTF-8" in by_line[2] and "0xe9" in by_line[2]
    assert by_line[3] == "blank line" and "a JSON string" in by_line[4]
    # .json and .csv: a BOM is read, a bad byte rejects its row only.
    (tmp_path / "a.json").write_bytes(b'\xef\xbb\xbf[{"instruction": "Q?", "output": "A."}, '
                                      b'{"instruction": "Q\xe9?", "output": "B."}]')
    (tmp_path / "c.csv").write_bytes(b"\xef\xbb\xbfinstruction,input,output\nQ?,,A.\nQ2?,,caf\xe9\n")
    for name, bad_line in (("a.json", 2), ("c.csv", 3)):
        loaded = load_samples(str(tmp_path / name), PRESETS["minillm"])
        assert len(loaded.samples) == 1, name
        assert [(r.source_line, "not UTF-8" in r.reason) for r in loaded.rejects] == [(bad_line, True)], name


def test_ragged_csv_lines_are_rejected_and_a_corrupt_parquet_is_a_clear_error(tmp_path, dolly_rows):
    src = tmp_path / "r.csv"
    src.write_text('instruction,input,output\nQ?,,A.\nQ2?,,B.,extra\n"Multi\nline?",,C.\n\nQ4?\n')
    loaded = load_samples(str(src), PRESETS["minillm"])
    assert [s.source_line for s in loaded.samples] == [2, 4]  # a quoted field over two lines starts on line 4
    by_line = {r.source_line: r.reason for r in loaded.rejects}
    assert "4 fields where the header line has 3" in by_line[3]
    assert by_line[6] == "blank line" and "1 field where" in by_line[7]
    good = tmp_path / "good.parquet"
    pl.DataFrame([{k: r[k] for k in ("instruction", "input", "output")} for r in dolly_rows[:3]]).write_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut.parquet: not a readable Parquet file"):
        load_samples(str(cut), PRESETS["minillm"])


def test_values_that_are_not_text_are_rejected_with_their_type(tmp_path):
    src = write_jsonl(tmp_path / "types.jsonl", [
        {"instruction": "Q?", "input": 12, "output": "A."},          # line 1: a number as context
        {"instruction": 5, "input": "", "output": "B."},             # line 2: a number as instruction
        {"instruction": "Q3?", "input": "", "output": ["C.", 3]},    # line 3: a number among references
        {"instruction": "Q4?", "input": "", "output": []},           # line 4: no reference
        {"instruction": "Q5?", "input": "", "output": "\ud83d D."},  # line 5: half a UTF-16 pair
        '{"instruction": "Q6?", "input": NaN, "output": "E."}',      # line 6: NaN context = missing (pandas)
    ])
    loaded = load_samples(str(src), PRESETS["minillm"])
    assert [s.source_line for s in loaded.samples] == [6]
    by_line = {r.source_line: r for r in loaded.rejects}
    assert by_line[1].field == "input" and "a number (12), not text" in by_line[1].reason
    assert by_line[2].field == "instruction" and "a number (5)" in by_line[2].reason
    assert by_line[3].field == "output" and "element 2" in by_line[3].reason
    assert "empty list" in by_line[4].reason and "UTF-16" in by_line[5].reason
