"""`curate score --backend ray` on a local Ray cluster (2 CPUs): the table the local backend writes, and a failed
part reported with its samples, then computed alone by the re-run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from test_score_cli import score_args
from typer.testing import CliRunner

from syllabus.core.table import read_table
from syllabus.core.topk_cache import TopKCache
from syllabus.curate.cli import app

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
runner = CliRunner()
TESTS = str(Path(__file__).parent)


def fail_on_marked_sample() -> None:
    """Run in every Ray worker as it starts (`worker_process_setup_hook`): the teacher pass raises on any part that
    holds the sample FAIL_SAMPLE names, as an engine would on a bad batch."""
    from syllabus.curate import passes

    bad, call = os.environ["FAIL_SAMPLE"], passes.PassWorker.__call__

    def failing(self, rows, engines):
        if self.column == "teacher_ce" and bad in rows["sample_id"].to_list():
            raise RuntimeError("injected failure")
        return call(self, rows, engines)

    passes.PassWorker.__call__ = failing


def start_ray(**env) -> None:
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
                                "OMP_NUM_THREADS": "1", **env}}
    if env:
        runtime_env["worker_process_setup_hook"] = "test_ray_backend.fail_on_marked_sample"
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env=runtime_env)


@pytest.fixture(scope="module")
def local_table(tmp_path_factory, small_dolly_module, tiny_model, tiny_teacher):
    out = tmp_path_factory.mktemp("local") / "table"
    result = runner.invoke(app, args(small_dolly_module, out, tiny_model, tiny_teacher))
    assert result.exit_code == 0, result.output
    return read_table(out)


@pytest.fixture(scope="module")
def small_dolly_module(tmp_path_factory, dolly_rows):
    path = tmp_path_factory.mktemp("data") / "dolly12.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dolly_rows[:12]))
    return path


def args(data, out, student, teacher, *extra):
    # greedy generation; 12 rows in parts of 4; the teacher's top 8 kept, so the cache is compared too
    return score_args(data, out, student, teacher, "--temperature", "0", "--teacher-topk", "8", *extra)


def assert_same_table(ray_table, local_table):
    a, b = ray_table.frame, local_table.frame
    assert a["sample_id"].to_list() == b["sample_id"].to_list()
    assert a["student_output"].to_list() == b["student_output"].to_list()  # greedy: identical generations
    for column in ("student_ce", "teacher_ce", "dds", "rouge_l", "output_ce"):
        assert a[column].to_list() == pytest.approx(b[column].to_list(), rel=1e-3), column
    assert ray_table.metadata["run_identity_sha256"] == local_table.metadata["run_identity_sha256"]
    ours, theirs = TopKCache(ray_table.path / "teacher-topk"), TopKCache(local_table.path / "teacher-topk")
    ids = b["sample_id"].to_list()
    for x, y in zip(ours.bins(ids), theirs.bins(ids)):
        assert x.ids.tolist() == y.ids.tolist()


def test_the_ray_backend_writes_the_local_backends_table(tmp_path, local_table, small_dolly_module, tiny_model,
                                                         tiny_teacher):
    start_ray()
    try:
        out = tmp_path / "table"
        result = runner.invoke(app, args(small_dolly_module, out, tiny_model, tiny_teacher, "--backend", "ray",
                                         "--replicas", "2"))
        assert result.exit_code == 0, result.output
    finally:
        ray.shutdown()
    table = read_table(out)
    assert_same_table(table, local_table)
    assert table.metadata["pass_stats"]["teacher-ce"]["rows"] == 12


def test_a_failed_part_is_named_with_its_samples_and_the_rerun_computes_it_alone(tmp_path, local_table,
                                                                                 small_dolly_module, tiny_model,
                                                                                 tiny_teacher):
    bad = local_table.frame["sample_id"][5]  # in the second part of 4
    out = tmp_path / "table"
    command = args(small_dolly_module, out, tiny_model, tiny_teacher, "--backend", "ray", "--replicas", "2")
    start_ray(FAIL_SAMPLE=bad)
    try:
        failed = runner.invoke(app, command)
    finally:
        ray.shutdown()
    assert failed.exit_code == 2
    assert "teacher-ce: 1 of 3 part(s) failed" in failed.output and "injected failure" in failed.output
    assert bad in failed.output and "part 1 " in failed.output
    written = sorted(p.name for p in (out / "_work" / "teacher-ce").glob("part-*.parquet"))
    assert written == ["part-00000.parquet", "part-00002.parquet"]  # the others were written all the same
    start_ray()
    try:
        result = runner.invoke(app, command)
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    table = read_table(out)
    stats = table.metadata["pass_stats"]
    assert stats["teacher-ce"]["rows"] == 4 and stats["student-gen"]["rows"] == stats["student-ce"]["rows"] == 0
    assert_same_table(table, local_table)
    assert pl.read_parquet(out / "_work" / "teacher-ce" / "part-00001.parquet")["sample_id"][1] == bad


def test_evaluation_on_ray_replicas_writes_the_local_runs_generations(tmp_path, tiny_model):
    from test_evaluate import eval_args

    from syllabus.evaluate.cli import app as evaluate_app

    local = runner.invoke(evaluate_app, eval_args(tiny_model, tmp_path / "local"))
    assert local.exit_code == 0, local.output
    start_ray()
    try:
        on_ray = runner.invoke(evaluate_app, eval_args(tiny_model, tmp_path / "ray", "--backend", "ray",
                                                       "--replicas", "2"))
        assert on_ray.exit_code == 0, on_ray.output
    finally:
        ray.shutdown()
    files = sorted(p.name for p in (tmp_path / "local" / "generations").glob("*.parquet"))
    assert len(files) == 6 and files == sorted(p.name for p in (tmp_path / "ray" / "generations").glob("*.parquet"))
    for name in files:  # sampled with per-request seeds: the same text wherever it ran
        a, b = (pl.read_parquet(tmp_path / run / "generations" / name) for run in ("local", "ray"))
        assert a.equals(b), name
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("local", "ray")]
    assert summaries[0]["results"] == summaries[1]["results"]


def test_an_unreachable_cluster_is_named_at_once(tmp_path, small_dolly, tiny_model):
    """`ray.init` retries an address where no cluster runs for minutes, then raises ConnectionError."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "syllabus.curate", "score", str(small_dolly), "--out",
                             str(tmp_path / "t"), "--student", str(tiny_model), "--teacher", str(tiny_model),
                             "--gen-engine", "hf", "--ce-engine", "hf", "--backend", "ray", "--ray-address", address,
                             "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    said = " ".join(result.stderr.split())
    assert f"--ray-address {address}: no Ray cluster answers there" in said and " s). Start one with" in said
    assert time.monotonic() - start < 120
