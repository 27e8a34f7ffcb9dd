"""Bad tables, schedules and output directories get a clear answer (exit code 2, the file and what to do), and no
command deletes or overwrites what is not its own kind of output (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from syllabus.core import workdir
from syllabus.core.schedule import ScheduleError, read_schedule
from syllabus.core.table import TableError, read_table, write_table
from syllabus.core.workdir import RunDirError, claim_output
from syllabus.curate.cli import app
from syllabus.curate.merge import merge_tables
from test_schedule_support import make_frame, write

runner = CliRunner()


def run(*args):
    """`curate ARGS` in-process: it may succeed or exit with a message, never end in a traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def said(result) -> str:
    """The command's output with every run of spaces and line breaks as one space."""
    return " ".join(result.output.split())


def hand_made(path: Path, frame: pl.DataFrame) -> Path:
    """A table written by hand, as a user might: one Parquet part and a metadata.json of their own."""
    path.mkdir(parents=True)
    frame.write_parquet(path / "part-00000.parquet")
    (path / "metadata.json").write_text(json.dumps({"table_fingerprint": "hand-made", "num_rows": frame.height}))
    return path


def shard_tables(tmp_path: Path, frame: pl.DataFrame) -> list[Path]:
    """Two shard tables of one (pretend) `curate score --num-shards 2` run."""
    paths = []
    for i, rows in enumerate((frame.head(frame.height // 2), frame.tail(frame.height - frame.height // 2))):
        meta = {"kind": "difficulty_table", "shard": {"num_shards": 2, "shard_index": i},
                "config": {"num_shards": 2, "shard_index": i}}
        paths.append(write_table(rows, tmp_path / f"shard{i}", meta).path)
    return paths


# 1. duplicate sample ids


def test_duplicate_sample_ids_are_refused_naming_them(tmp_path):
    frame = make_frame(20)
    clash = frame.head(7).with_columns(pl.col("student_ce") * 10)  # the same samples again, with other scores
    table = hand_made(tmp_path / "t", pl.concat([frame, clash]))
    with pytest.raises(TableError, match=r"7 sample_ids appear more than once: "
                                         + frame["sample_id"][0] + r".* and 2 more"):
        read_table(table)
    result = run("schedule", table, "--method", "full", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "appear more than once" in result.output
    assert not (tmp_path / "s").exists()
    with pytest.raises(TableError, match=f"sample_id {frame['sample_id'][0]} appears more than once"):
        write_table(pl.concat([frame, frame.head(1)]), tmp_path / "w", {})


def test_merge_names_a_sample_found_in_two_shards(tmp_path):
    frame = make_frame(20)
    a, b = shard_tables(tmp_path, frame)
    write_table(pl.concat([read_table(b).frame, frame.head(1)]), b, read_table(b).metadata)
    with pytest.raises(TableError, match=f"1 sample_id is in more than one shard: {frame['sample_id'][0]}"):
        merge_tables([a, b], tmp_path / "m")


# 2. a part deleted, added or given alone


def test_a_missing_part_is_refused_naming_it_and_the_rows_it_held(tmp_path):
    table = write_table(make_frame(20), tmp_path / "t", {}, rows_per_part=7)
    (table.path / "part-00001.parquet").unlink()
    with pytest.raises(TableError, match=r"part-00001.parquet .1 of its 3 parts, 7 of its 20 rows. is missing.*"
                                         r"curate score"):
        read_table(table.path)
    result = run("schedule", table.path, "--method", "full", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "part-00001.parquet" in result.output and not (tmp_path / "s").exists()


def test_a_table_without_part_names_is_checked_by_its_row_count(tmp_path):
    table = write_table(make_frame(20), tmp_path / "t", {}, rows_per_part=7)
    meta = json.loads((table.path / "metadata.json").read_text())
    del meta["parts"]  # as tables written before part names were recorded
    (table.path / "metadata.json").write_text(json.dumps(meta))
    assert read_table(table.path).frame.height == 20
    (table.path / "part-00002.parquet").unlink()
    with pytest.raises(TableError, match="holds 14 rows in 2 parts, but its metadata.json records 20"):
        read_table(table.path)


def test_a_stray_part_and_a_lone_part_are_refused(tmp_path):
    table = write_table(make_frame(20), tmp_path / "t", {}, rows_per_part=7)
    make_frame(3, seed=1).write_parquet(table.path / "part-00003.parquet")
    with pytest.raises(TableError, match="part-00003.parquet, which its metadata.json does not list"):
        read_table(table.path)
    (table.path / "part-00003.parquet").unlink()
    with pytest.raises(TableError, match="holds 7 of the table's 20 rows: pass the table directory"):
        read_table(table.path / "part-00000.parquet")


# 3. truncated or corrupt files


def test_a_truncated_part_is_named_with_the_command_to_rerun(tmp_path):
    from syllabus.train.cli import app as train_app

    table = write(tmp_path, make_frame(20))
    assert run("schedule", table.path, "--method", "full", "--out", tmp_path / "built").exit_code == 0
    part = table.path / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:200])
    with pytest.raises(TableError, match=f"{part}: not a readable Parquet file .*curate score"):
        read_table(table.path)
    for args in (["schedule", table.path, "--method", "full", "--out", tmp_path / "s"], ["inspect", table.path],
                 ["merge", table.path, "--out", tmp_path / "m"]):
        result = run(*args)
        assert result.exit_code == 2 and str(part) in said(result), (args, result.output)
    trained = runner.invoke(train_app, ["run", "--manifest", str(tmp_path / "built"), "--out", str(tmp_path / "run"),
                                        "--student", "unused", "--teacher", "unused"])  # the table is read first
    assert trained.exit_code == 2 and str(part) in said(trained), trained.output


def test_score_teacher_from_names_a_truncated_table(tmp_path, small_dolly, tiny_model):
    table = write(tmp_path, make_frame(20))
    part = table.path / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:200])
    result = run("score", small_dolly, "--student", tiny_model, "--teacher-from", table.path, "--out", tmp_path / "o",
                 "--gen-engine", "hf", "--ce-engine", "hf", "--quiet")
    assert result.exit_code == 2 and str(part) in said(result), result.output
    assert not (tmp_path / "o").exists()


def test_a_corrupt_metadata_json_is_named_with_line_and_column(tmp_path):
    table = write(tmp_path, make_frame(20))
    meta = table.path / "metadata.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(TableError, match=f"{meta}, line 5 column 3: not valid JSON"):
        read_table(table.path)
    for args in (["schedule", table.path, "--method", "full", "--out", tmp_path / "s"], ["inspect", table.path]):
        result = run(*args)
        assert result.exit_code == 2 and "not valid JSON" in said(result), (args, result.output)
    meta.write_text('{"num_rows": 20}')
    with pytest.raises(TableError, match="metadata.json: lacks table_fingerprint"):
        read_table(table.path)


def test_a_corrupt_manifest_is_named_with_line_and_column(tmp_path):
    table = write(tmp_path, make_frame(20))
    assert run("schedule", table.path, "--method", "full", "--out", tmp_path / "s").exit_code == 0
    manifest = tmp_path / "s" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[:80])
    with pytest.raises(ScheduleError, match=f"{manifest}, line 6 column 15: not valid JSON"):
        read_schedule(tmp_path / "s")
    result = run("inspect", tmp_path / "s")
    assert result.exit_code == 2 and "line 6 column 15" in said(result)
    manifest.write_bytes(b"\xff\xfe" + text.encode())
    result = run("inspect", tmp_path / "s")
    assert result.exit_code == 2 and "not UTF-8" in said(result)


# 4. outputs replace only outputs of their own kind


def test_merge_never_replaces_another_directory(tmp_path):
    a, b = shard_tables(tmp_path, make_frame(20))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        result = run("merge", a, b, "--out", mine, *extra)
        assert result.exit_code == 2 and "notes.txt" in said(result), result.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    schedule = tmp_path / "s"
    assert run("schedule", write(tmp_path, make_frame(20)).path, "--method", "full", "--out", schedule).exit_code == 0
    result = run("merge", a, b, "--out", schedule, "--overwrite")
    assert result.exit_code == 2 and "holds a schedule" in said(result)
    assert not (schedule / "metadata.json").exists()
    into_input = run("merge", a, b, "--out", a, "--overwrite")
    assert into_input.exit_code == 2 and "is one of the tables to merge" in said(into_input)


def test_merge_onto_a_table_needs_overwrite(tmp_path):
    a, b = shard_tables(tmp_path, make_frame(20))
    other = write(tmp_path, make_frame(5, seed=3), "other")
    refused = run("merge", a, b, "--out", other.path)
    assert refused.exit_code == 2 and "holds a difficulty table" in said(refused) and "--overwrite" in said(refused)
    assert read_table(other.path).fingerprint == other.fingerprint
    assert run("merge", a, b, "--out", other.path, "--overwrite").exit_code == 0
    assert read_table(other.path).frame.height == 20


def test_overwrite_deletes_only_an_output_of_the_same_kind(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="holds files that are not a Syllabus output .notes.txt."):
        claim_output(mine, {"a": 1}, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    training = tmp_path / "run"
    claim_output(training, {"lr": 1}, overwrite=False, what="training run")
    with pytest.raises(RunDirError, match="holds a training run"):
        claim_output(training, {"a": 1}, overwrite=True)
    assert (training / "_work" / "run.json").exists()
    table = write(tmp_path, make_frame(5))
    with pytest.raises(RunDirError, match="holds a difficulty table"):
        claim_output(table.path, {"a": 1}, overwrite=True, what="evaluation run")
    claim_output(table.path, {"a": 1}, overwrite=True)  # a scoring run may replace a table
    assert not (table.path / "metadata.json").exists()
    (training / "checkpoints").mkdir()
    run_names = ("checkpoints",)
    claim_output(training, {"lr": 1}, overwrite=True, what="training run", names=run_names)  # the same run: resumed
    assert (training / "checkpoints").exists()
    claim_output(training, {"lr": 1}, overwrite=True, what="training run", restart=True,
                 names=run_names)  # started over
    assert not (training / "checkpoints").exists()
    claim_output(training, {"lr": 2}, overwrite=True, what="training run", names=run_names)  # the same kind: replaced
    with pytest.raises(RunDirError, match="is a file"):
        claim_output(mine / "notes.txt", {"a": 1}, overwrite=True)
    with pytest.raises(RunDirError, match="holds files that are not a Syllabus output"):
        workdir.replace_output(mine, "training run")
    assert (mine / "notes.txt").exists()


def test_a_run_directory_of_an_earlier_version_is_resumed_and_replaced(tmp_path):
    out = tmp_path / "run"
    (out / "_work").mkdir(parents=True)
    (out / "_work" / "run.json").write_text(json.dumps({"config": {"lr": 1}}))  # the identity alone, no kind
    (out / "checkpoint.bin").write_text("weights")
    claim_output(out, {"config": {"lr": 1}}, overwrite=False, what="training run", names=("checkpoint.bin",))
    assert (out / "checkpoint.bin").exists()
    (out / "_work" / "run.json").write_text(json.dumps({"config": {"lr": 1}}))
    # the same identity keys
    claim_output(out, {"config": {"lr": 2}}, overwrite=True, what="training run", names=("checkpoint.bin",))
    assert not (out / "checkpoint.bin").exists()
    (out / "_work" / "run.json").write_text(json.dumps({"model": "m", "sets": []}))  # another kind's identity
    (out / "checkpoint.bin").write_text("weights")
    with pytest.raises(RunDirError, match="earlier Syllabus version"):
        claim_output(out, {"config": {"lr": 2}}, overwrite=True, what="training run", names=("checkpoint.bin",))
    assert (out / "checkpoint.bin").exists()


def test_schedule_overwrite_replaces_only_a_schedule(tmp_path):
    table = write(tmp_path, make_frame(20))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = run("schedule", table.path, "--method", "full", "--out", mine, "--overwrite")
    assert result.exit_code == 2 and "notes.txt" in said(result)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    result = run("schedule", table.path, "--method", "full", "--out", table.path, "--overwrite")
    assert result.exit_code == 2 and "holds a difficulty table" in said(result)
    assert not (table.path / "manifest.json").exists()


# 5. non-numeric scores


def test_a_score_column_of_text_names_the_column_and_the_sample(tmp_path):
    frame = make_frame(20)
    text = frame["student_ce"].cast(pl.String).scatter(3, "abc")
    table = hand_made(tmp_path / "t", frame.with_columns(student_ce=text))
    for method in ("spectrum", "full"):
        result = run("schedule", table, "--method", method, "--out", tmp_path / method)
        assert result.exit_code == 2, result.output
        assert f"column student_ce holds 'abc' (sample_id {frame['sample_id'][3]})" in said(result)
    numbers_as_text = hand_made(tmp_path / "t2", frame.with_columns(pl.col("student_ce").cast(pl.String)))
    assert run("schedule", numbers_as_text, "--method", "full", "--out", tmp_path / "ok").exit_code == 0


# 6. inspect's options


def test_inspect_names_the_valid_columns(tmp_path):
    table = write(tmp_path, make_frame(20))
    assert run("schedule", table.path, "--method", "full", "--out", tmp_path / "s").exit_code == 0
    for args in (["--column", "nope"], ["--column", "nope", "--plots", tmp_path / "p"], ["--column", "prompt"]):
        for path in (table.path, tmp_path / "s"):
            result = run("inspect", path, *args)
            assert result.exit_code == 2, (path, args, result.output)
            assert "numeric columns: " in said(result) and "student_ce, teacher_ce" in said(result)
    shown = run("inspect", tmp_path / "s", "--column", "rouge_l")
    assert shown.exit_code == 0 and "mean rouge_l" in shown.output
    (tmp_path / "file").write_text("")
    result = run("inspect", table.path, "--plots", tmp_path / "file")
    assert result.exit_code == 2 and "--plots" in said(result) and "is a file" in said(result)


# 7. a different schedule into a taken directory


def test_a_different_schedule_names_the_differing_settings(tmp_path):
    table = write(tmp_path, make_frame(20))
    assert run("schedule", table.path, "--method", "full", "--epochs", 3, "--out", tmp_path / "s").exit_code == 0
    result = run("schedule", table.path, "--method", "full", "--epochs", 2, "--seed", 4, "--out", tmp_path / "s")
    assert result.exit_code == 2
    assert "params.epochs: 3 -> 2" in said(result) and "seed: 0 -> 4" in said(result)
    result = run("schedule", table.path, "--method", "spectrum", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "method: 'full' -> 'spectrum'" in said(result)
    other = write(tmp_path, make_frame(20, seed=5), "other")
    result = run("schedule", other.path, "--method", "full", "--epochs", 3, "--out", tmp_path / "s")
    assert result.exit_code == 2
    assert f"table.fingerprint: '{table.fingerprint[:16]}' -> '{other.fingerprint[:16]}'" in said(result)


def test_a_part_that_cannot_be_written_is_named_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    import pyarrow.parquet as pq

    from syllabus.core.io import WriteError, atomic_write_parquet

    def disk_full(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    target = tmp_path / "_work" / "part-00000.parquet"
    with pytest.raises(WriteError, match=r"cannot write the Parquet file to .*part-00000.parquet.*MiB free there"):
        atomic_write_parquet(pl.DataFrame({"a": [1]}), target)
    assert list(target.parent.iterdir()) == []  # no temp file left to fill the disk further


def test_a_flipped_byte_in_a_data_page_is_caught_by_its_checksum(tmp_path):
    """Without page checksums the damaged page decodes into other numbers, silently."""
    import pyarrow.parquet as pq

    table = write_table(make_frame(200), tmp_path / "t", {})
    part = table.path / "part-00000.parquet"
    meta = pq.ParquetFile(part).metadata
    column = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                  if meta.row_group(0).column(i).path_in_schema == "student_ce")
    data = bytearray(part.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0xFF  # inside the page's values
    part.write_bytes(bytes(data))
    with pytest.raises(TableError, match=f"{part}: not a readable Parquet file .*(CRC|checksum)"):
        read_table(table.path)


def test_a_failed_write_inside_a_snapshot_still_removes_the_partial_snapshot(tmp_path, monkeypatch):
    """An atomic write that fails inside `writing(..., cleanup=True)` is named by the inner write, and the outer
    block still gives the space of its partial directory back."""
    import errno

    from syllabus.core import io

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    snapshot = tmp_path / "state.tmp"
    monkeypatch.setattr(io.os, "fsync", disk_full)
    with pytest.raises(io.WriteError, match="progress.json"):
        with io.writing(snapshot, "training snapshot", cleanup=True):
            snapshot.mkdir()
            (snapshot / "student.safetensors").write_bytes(b"weights")
            io.atomic_write_json(snapshot / "progress.json", {"global_step": 2})
    assert not snapshot.exists()


def test_overwrite_deletes_only_what_the_command_wrote_and_refuses_beside_anything_else(tmp_path):
    table = write(tmp_path, make_frame(20))
    assert run("schedule", table.path, "--method", "full", "--out", table.path / "schedules" / "full").exit_code == 0
    (table.path / "notes.txt").write_text("keep me")
    for what in ("scoring run", None):  # curate score's claim, and curate merge's replace
        with pytest.raises(RunDirError, match=r"also holds notes.txt, schedules/: nothing was deleted"):
            if what:
                claim_output(table.path, {"a": 1}, overwrite=True, what=what)
            else:
                workdir.replace_output(table.path, workdir.TABLE)
    assert (table.path / "metadata.json").exists() and (table.path / "schedules" / "full" / "manifest.json").exists()
    evaluation = tmp_path / "eval"
    claim_output(evaluation, {"m": 1}, overwrite=False, what="evaluation run", names=("summary.json",))
    (evaluation / "summary.json").write_text("{}")
    (evaluation / "mine").mkdir()
    with pytest.raises(RunDirError, match="also holds mine/"):
        claim_output(evaluation, {"m": 2}, overwrite=True, what="evaluation run", names=("summary.json",))
    assert (evaluation / "summary.json").exists()
    (evaluation / "mine").rmdir()
    claim_output(evaluation, {"m": 2}, overwrite=True, what="evaluation run", names=("summary.json",))
    assert not (evaluation / "summary.json").exists() and evaluation.is_dir()  # its own files went, not the folder
    workdir.release_output(evaluation)


HOLD = """
import sys, time
from pathlib import Path
from syllabus.core.workdir import claim_output
claim_output(Path(sys.argv[1]), {"a": 1}, overwrite=False, what="training run")
print("held", flush=True)
time.sleep(120)
"""


def test_a_directory_claimed_by_a_live_process_is_refused_and_a_killed_ones_is_taken_over(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for identity, overwrite in (({"a": 1}, False), ({"a": 2}, True)):  # resumed or replaced: refused alike
            with pytest.raises(RunDirError, match=f"in use by another process .a training run, pid {holder.pid} "):
                claim_output(out, identity, overwrite=overwrite, what="training run")
        assert (out / "_work" / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    claim_output(out, {"a": 1}, overwrite=False, what="training run")  # the dead holder's lock is no obstacle
    claim_output(out, {"a": 1}, overwrite=False, what="training run")  # nor this process's own
    workdir.release_output(out)


def test_a_full_disk_is_one_line_from_every_command_and_the_same_command_then_finishes(tmp_path, monkeypatch):
    import errno
    import os

    from syllabus.curate.schedules import manifest as manifest_io

    table = write(tmp_path, make_frame(20))
    out = tmp_path / "schedule"
    written = manifest_io.atomic_write_bytes
    calls = []

    def full_after_one(path, data):  # the disk fills up after the first shard
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written(path, data)

    monkeypatch.setattr(manifest_io, "atomic_write_bytes", full_after_one)
    args = ("schedule", table.path, "--method", "srd", "--out", out)
    result = run(*args)
    line = said(result)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"cannot write {out}/epoch-001.parquet (No space left on device)" in line and "MiB free there" in line
    assert "run the same command again" in line
    monkeypatch.setattr(manifest_io, "atomic_write_bytes", written)  # space freed
    again = run(*args)  # as the message says: no --overwrite needed for its own unfinished schedule
    assert again.exit_code == 0, again.output
    assert read_schedule(out).epochs
