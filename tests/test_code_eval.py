"""Code evaluation: the sandbox holds hostile programs, HumanEval completions score 1 and 0, pass@k is the closed
form, and `evaluate run --sets humaneval` runs nothing without --allow-code-execution."""

from __future__ import annotations

import json
import os
import socket
import threading
from math import comb
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syllabus.evaluate.code import harness, humaneval_problems, pass_at_k, passes, program, truncate
from syllabus.evaluate import sandbox
from syllabus.evaluate.sandbox import Limits, SandboxError, isolation, run_program

QUICK = Limits(timeout_s=3)


@pytest.fixture(autouse=True)
def _contained(request):
    """Tests that run code need a machine that can contain it; elsewhere they are skipped with the reason."""
    if request.node.get_closest_marker("no_sandbox"):
        return
    try:
        isolation()
    except SandboxError as exc:
        pytest.skip(f"this machine cannot contain generated code: {exc}")


@pytest.mark.no_sandbox
def test_root_without_a_pids_cgroup_is_refused(monkeypatch):
    monkeypatch.setattr(sandbox.os, "getuid", lambda: 0)
    monkeypatch.setattr(sandbox, "_cgroup_root", lambda: None)
    sandbox.isolation.cache_clear()
    try:
        with pytest.raises(SandboxError, match="root ignores RLIMIT_NPROC.*--pids-limit"):
            isolation()
    finally:
        sandbox.isolation.cache_clear()


def sandbox_processes() -> int:
    """Processes left running as the sandbox uid (root's) or in a sandbox cgroup: there must be none."""
    uid = isolation().uid
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and uid != os.getuid():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                continue
    return count


def test_a_fork_bomb_is_capped_and_killed():
    bomb = "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    outcome = run_program(bomb, QUICK)
    assert outcome.status == "timed_out"
    assert sandbox_processes() == 0
    assert run_program("print('after')").passed  # the machine still forks


def test_an_infinite_loop_times_out_and_a_100_gb_allocation_fails():
    looped = run_program("while True:\n    pass\n", QUICK)
    assert looped.status == "timed_out" and 3 <= looped.seconds < 8
    allocation = run_program("block = bytearray(100 * 2**30)\n")
    assert allocation.status == "failed" and "MemoryError" in allocation.detail


def test_a_program_cannot_delete_files_outside_its_directory(tmp_path):
    if isolation().uid == os.getuid():
        pytest.skip("not root: the program runs as this user, who owns these files (evaluate/sandbox.py says so)")
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    outcome = run_program(f"import os, shutil\nos.remove({str(victim)!r})\nshutil.rmtree({str(tmp_path)!r})\n")
    assert outcome.status == "failed" and "PermissionError" in outcome.detail
    assert victim.read_text() == "mine"


def test_a_program_cannot_reach_a_port_on_this_machine():
    if not isolation().namespaces:
        pytest.skip("no network namespace on this machine (unshare unavailable)")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(5)
    accepted = []

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    waiter = threading.Thread(target=accept)
    waiter.start()
    port = listener.getsockname()[1]
    outcome = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'x')\n")
    waiter.join()
    listener.close()
    assert outcome.status == "failed" and not accepted


def test_writing_to_stdout_or_stderr_forever_ends():
    stdout = run_program("while True:\n    print('x' * 1000)\n", QUICK)
    assert stdout.status == "timed_out"  # stdout goes nowhere: the clock ends it
    stderr = run_program("import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n", QUICK)
    assert stderr.status == "failed" and len(stderr.detail) < 3000  # the file-size limit ends it


def test_a_process_that_leaves_its_group_dies_with_the_program():
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    assert run_program(escape, QUICK).passed
    assert sandbox_processes() == 0


def test_a_correct_and_a_wrong_humaneval_solution_score_1_and_0():
    problems, _ = humaneval_problems()
    assert len(problems) == 164
    first = problems[0]
    references = harness(first)
    assert passes(first["canonical_solution"], references)
    assert not passes("    return False\n", references)
    # what the model writes after the function body is cut before it runs
    assert passes(first["canonical_solution"] + "\n\ndef extra():\n    raise SystemExit(1)\nextra()\n", references)
    assert truncate("    return 1\nprint('x')") == "    return 1"
    assert program("    pass", references).startswith(first["prompt"] + "    pass\n")


@pytest.mark.no_sandbox
@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 1, 1), (5, 2, 5), (10, 3, 5), (20, 19, 10), (3, 3, 2)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    closed_form = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k([n, n], [c, c], k) == pytest.approx(100 * closed_form)
    assert pass_at_k([n, n], [c, 0], k) == pytest.approx(50 * closed_form)


@pytest.mark.no_sandbox
def test_humaneval_is_refused_without_allow_code_execution(tmp_path, tiny_model):
    from syllabus.evaluate.cli import app

    result = CliRunner().invoke(app, ["run", "--model", str(tiny_model), "--out", str(tmp_path / "ev"), "--sets",
                                      "humaneval", "--limit", "2", "--engine", "hf"])
    assert result.exit_code == 2 and "--allow-code-execution" in result.output
    assert not (tmp_path / "ev" / "generations").exists()


@pytest.mark.slow
def test_evaluate_run_scores_humaneval_with_pass_at_k(tmp_path, tiny_model):
    from syllabus.evaluate.cli import app

    out = tmp_path / "ev"
    args = ["run", "--model", str(tiny_model), "--out", str(out), "--sets", "humaneval", "--engine", "hf",
            "--seeds", "1,2", "--max-new-tokens", "16", "--allow-code-execution"]
    cut = CliRunner().invoke(app, [*args, "--max-prompt-tokens", "300"])  # 13 prompts are longer
    assert cut.exit_code == 2 and "--max-prompt-tokens 395 or more" in cut.output
    result = CliRunner().invoke(app, [*args, "--limit", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    humaneval = summary["results"]["sets"]["humaneval"]
    assert humaneval["metric"] == "pass@1" and humaneval["rows"] == 3
    assert set(humaneval["pass_at_k"]) == {"pass@1"}  # pass@5 needs 5 samples per problem
    assert humaneval["pass_at_k"]["pass@1"] == pytest.approx(humaneval["mean"])  # a random model passes nothing
    assert "network and PID namespaces" in summary["code_execution"] or "no network" in summary["code_execution"]
    assert "pass@1" in (out / "summary.md").read_text()
