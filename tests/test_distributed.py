"""`train run` on many processes: `torchrun --nproc_per_node 2` on this CPU (gloo), against one process.

Two processes at grad_accum 1 must train what one process trains at grad_accum 2 (the same samples per step, the
loss normalised by the step's tokens over both ranks), and a run killed on one rank must resume, on two processes,
to the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import scored_table, short_rows, tiny_llama
from syllabus.curate.schedules.build import build_schedule
from syllabus.train.cli import app
from syllabus.train.data import epoch_micro_batches, step_groups
from syllabus.train.distributed import lockstep_passes

PREEMPT = str(Path(__file__).with_name("preempt.py"))


class Planted:
    """A pickle that creates `marker` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)

runner = CliRunner()


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("grad_accum", [1, 2])
@pytest.mark.parametrize("num_samples", [1, 11, 12, 24])
def test_ranks_split_each_step_and_together_see_the_epoch_once_in_order(world_size, grad_accum, num_samples):
    ids = [f"s{i}" for i in range(num_samples)]
    micro = epoch_micro_batches(ids, seed=3, epoch=1, micro_batch_size=4)
    one = step_groups(micro, grad_accum * world_size)  # one process at the same global batch
    ranks = [step_groups(micro, grad_accum, rank, world_size) for rank in range(world_size)]
    assert all(len(r) == len(one) for r in ranks)  # every rank takes every optimizer step
    for s, (step, mine) in enumerate(one):
        assert mine == step and all(r[s][0] == step for r in ranks)
        shares = [r[s][1] for r in ranks]
        assert sorted(b for share in shares for b in share) == sorted(step)  # each micro-batch on exactly one rank
        assert all(len(share) <= grad_accum for share in shares)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        for sharded in (False, True):  # the passes each rank runs: its share at weight 1, padded at weight 0
            lock = [lockstep_passes(step, share, world_size, sharded) for share in shares]
            for share, (passes, weights) in zip(shares, lock):
                assert passes[:len(share)] == share
                assert weights == [1.0] * len(share) + [0.0] * (len(passes) - len(share))
            counts = {len(passes) for passes, _ in lock}
            # FSDP: every pass is a collective, so all ranks run as many; DDP: one at least, no more than its share
            assert len(counts) == 1 if sharded else all(len(p) == max(1, len(s)) for s, (p, _) in zip(shares, lock))
    seen = [sid for step, _ in one for batch in step for sid in batch]
    assert sorted(seen) == sorted(ids) and seen == [sid for batch in micro for sid in batch]


@pytest.fixture(scope="module")
def table(tmp_path_factory, dolly_rows, real_tokenizer_dir):
    rows = short_rows(dolly_rows, 11)
    return scored_table(tmp_path_factory.mktemp("dist"), rows, 256, real_tokenizer_dir)


def args(manifest, out, student, teacher, *extra):
    return ["run", "--manifest", str(manifest), "--out", str(out), "--student", str(student), "--teacher", str(teacher),
            "--micro-batch-size", "4", "--lr", "3e-3", "--precision", "fp32", *extra]


def torchrun(*command, nproc=2, env=None):
    """`torchrun --standalone --nproc_per_node N` on this CPU; each rank runs one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *command], capture_output=True, text=True, env=env, timeout=900)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out):
    return load_file(out / "checkpoints" / "final" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_processes_train_what_one_process_trains_at_the_same_global_batch(table, tmp_path, tiny_model,
                                                                               tiny_teacher, sharding):
    # DA-KD re-scores before epochs 2 and 3, split across ranks; 11 rows in micro-batches of 4 make 3 micro-batches
    # an epoch, so on two processes rank 1 has none in each epoch's second step and runs it at weight 0. Re-scoring
    # one row per forward, rank 0 runs 6 forwards and rank 1 5: under FSDP, where every forward is a collective,
    # rank 1 runs a padding forward to meet rank 0
    sched, _ = build_schedule(table.path, "dakd", tmp_path / "sched", {"epochs": 3})
    one, two = tmp_path / "one", tmp_path / "two"
    config = tmp_path / "rescore.yaml"
    config.write_text("rescore_batch_tokens: 1\n")
    result = runner.invoke(app, args(sched, one, tiny_model, tiny_teacher, "--grad-accum", "2", "--config", str(config)))
    assert result.exit_code == 0, result.output
    ran = torchrun("-m", "syllabus.train", *args(sched, two, tiny_model, tiny_teacher, "--grad-accum", "1", "--config",
                                                 str(config), *sharding))
    assert ran.returncode == 0, ran.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, len(a) + 1))
    assert [r["tokens"] for r in b] == [r["tokens"] for r in a]  # the same samples in every step
    for key in ("loss", "ce", "kd", "grad_norm"):  # over both ranks, normalised by the step's tokens
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4), key
    rescored = [[json.loads(line) for line in (out / "rescore.jsonl").read_text().splitlines()] for out in (one, two)]
    assert [r["selected"] for r in rescored[1]] == [r["selected"] for r in rescored[0]]
    assert [r.get("padding_forwards") for r in rescored[1]] == ([1, 1] if sharding else [None, None])
    assert [r["mean_student_ce"] for r in rescored[1]] == pytest.approx([r["mean_student_ce"] for r in rescored[0]],
                                                                          rel=1e-5)
    if sharding:  # each rank wrote its own shards of the student and the optimizer
        assert sorted(p.name for p in (two / "state" / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not (two / "state" / "student.safetensors").exists()
    wa, wb = final_weights(one), final_weights(two)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_a_run_killed_on_one_rank_resumes_on_two_to_the_uninterrupted_weights(table, tmp_path, real_tokenizer_dir,
                                                                             tiny_teacher, sharding):
    # dropout on: each rank's generator must come back from the snapshot, or the masks after resume differ
    student = tiny_llama(real_tokenizer_dir, tmp_path / "dropout-student", seed=3, dropout=0.1)
    sched, _ = build_schedule(table.path, "l2m", tmp_path / "sched", {"stages": 2, "epochs_per_stage": 2})
    ref, out = tmp_path / "ref", tmp_path / "killed"
    common = ("--save-every-steps", "2", *sharding)
    ran = torchrun("-m", "syllabus.train", *args(sched, ref, student, tiny_teacher, *common))
    assert ran.returncode == 0, ran.stderr[-3000:]
    killed = torchrun(PREEMPT, "train-step", "5", "syllabus.train",
                      *args(sched, out, student, tiny_teacher, *common), env={"PREEMPT_RANK": "1"})
    assert killed.returncode != 0
    progress = json.loads((out / "state" / "progress.json").read_text())
    assert progress["global_step"] == 4 and progress["num_processes"] == 2 and progress["fsdp"] == bool(sharding)
    assert sorted(p.name for p in (out / "state").glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    # one process would read the epoch's position as other samples: refused, and the snapshot is kept
    refused = runner.invoke(app, args(sched, out, student, tiny_teacher, "--save-every-steps", "2", "--resume"))
    assert refused.exit_code == 2 and "--nproc_per_node 2" in refused.output
    if sharding:  # a sharded snapshot is not read whole, nor a whole one in shards
        other = torchrun("-m", "syllabus.train",
                         *args(sched, out, student, tiny_teacher, "--save-every-steps", "2", "--resume"))
        assert other.returncode != 0 and other.stderr.count("Resume it with --fsdp") == 1  # said once, by rank 0
        # DCP's metadata file is a pickle: one planted in a received run directory is refused, never run
        metadata, marker = out / "state" / "sharded" / ".metadata", tmp_path / "planted-code-ran"
        original = metadata.read_bytes()
        metadata.write_bytes(pickle.dumps(Planted(marker)))
        tampered = torchrun("-m", "syllabus.train", *args(sched, out, student, tiny_teacher, *common, "--resume"))
        assert tampered.returncode != 0 and not marker.exists()
        assert "the sharded snapshot's metadata is not what train run writes" in tampered.stderr
        metadata.write_bytes(original)
    resumed = torchrun("-m", "syllabus.train", *args(sched, out, student, tiny_teacher, *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(ref), final_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in metrics(out)] == [r["step"] for r in metrics(ref)]  # no step logged twice


def test_launch_modes_decide_sharding_and_the_unsupported_ones_are_refused_before_training():
    # accelerate on a CPU runs FSDP configs as DDP, so the launch mode itself is what is checked here
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from syllabus.core.config import ConfigError
    from syllabus.train.config import TrainConfig
    from syllabus.train.loop import TrainError, check_distributed

    def launched(mode, processes=2):
        return SimpleNamespace(distributed_type=DistributedType[mode], num_processes=processes)

    plain, fsdp = TrainConfig(manifest="m", out="o"), TrainConfig(manifest="m", out="o", fsdp=True)
    assert check_distributed(launched("MULTI_GPU"), plain) is False  # DDP
    assert check_distributed(launched("MULTI_CPU"), fsdp) is True  # torchrun ... --fsdp
    with pytest.warns(UserWarning, match="fsdp_\\* settings are not read"):
        assert check_distributed(launched("FSDP"), plain) is True  # accelerate launch --config_file fsdp.yaml
    with pytest.raises(TrainError, match="DEEPSPEED is not supported.*examples/accelerate/fsdp.yaml"):
        check_distributed(launched("DEEPSPEED"), plain)
    with pytest.raises(TrainError, match="this is one: launch it with torchrun"):
        check_distributed(launched("NO", processes=1), fsdp)
    with pytest.raises(TrainError, match="FSDP with --lora"):
        check_distributed(launched("FSDP"), TrainConfig(manifest="m", out="o", lora="r=4"))
    with pytest.raises(ConfigError, match="--fsdp with --lora"):
        TrainConfig(manifest="m", out="o", fsdp=True, lora="r=4")


@pytest.mark.slow
def test_killing_torchruns_process_group_stops_its_ranks_and_frees_the_run_directory(table, tmp_path, tiny_model,
                                                                                      tiny_teacher):
    # torchrun starts each rank in a session of its own: a kill -9 of its process group reaches only the launcher
    sched, _ = build_schedule(table.path, "full", tmp_path / "sched", {"epochs": 2})
    out, gate = tmp_path / "run", tmp_path / "gate"
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", PREEMPT, "train-pause", "1",
               "syllabus.train", *args(sched, out, tiny_model, tiny_teacher)]
    launcher = subprocess.Popen([sys.executable, *command],
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PREEMPT_GATE": str(gate)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    paused = [tmp_path / f"gate.paused-{rank}" for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 300
        while not all(p.exists() for p in paused):
            assert launcher.poll() is None and time.monotonic() < deadline, "torchrun ended before step 1"
            time.sleep(0.1)
        ranks = [int(p.read_text()) for p in paused]
        second = runner.invoke(app, args(sched, out, tiny_model, tiny_teacher))
        assert second.exit_code == 2 and f"pid {ranks[0]}" in second.output, second.output
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(alive(pid) for pid in ranks):
            assert time.monotonic() < deadline, f"ranks {[p for p in ranks if alive(p)]} outlived their torchrun"
            time.sleep(0.1)
    finally:
        gate.touch()  # a rank still alive would go on now (and the test fail on the metrics below)
        launcher.kill()
    time.sleep(2)
    assert [r["step"] for r in metrics(out)] == [1]
    resumed = runner.invoke(app, args(sched, out, tiny_model, tiny_teacher, "--overwrite"))  # the lock is free again
    assert resumed.exit_code == 0, resumed.output


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_two_processes_generate_and_train_on_policy_what_one_process_does(table, tmp_path, tiny_model, tiny_teacher):
    # each rank samples for its own micro-batches, seeded by their index in the step: the same responses as one
    # process running both micro-batches of the step (11 rows: rank 1 has no micro-batch in each epoch's last step)
    sched, _ = build_schedule(table.path, "full", tmp_path / "sched", {"epochs": 2})
    one, two = tmp_path / "one", tmp_path / "two"
    on_policy = ("--on-policy", "gkd", "--on-policy-max-new-tokens", "8", "--on-policy-engine", "transformers")
    result = runner.invoke(app, args(sched, one, tiny_model, tiny_teacher, "--grad-accum", "2", *on_policy))
    assert result.exit_code == 0, result.output
    ran = torchrun("-m", "syllabus.train", *args(sched, two, tiny_model, tiny_teacher, "--grad-accum", "1", *on_policy))
    assert ran.returncode == 0, ran.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    assert [r["generated_tokens"] for r in b] == [r["generated_tokens"] for r in a]
    assert [r["tokens"] for r in b] == [r["tokens"] for r in a] and all(r["generated_tokens"] > 0 for r in a)
    for key in ("loss", "kd", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4), key
    wa, wb = final_weights(one), final_weights(two)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
def test_two_processes_train_distillm_what_one_process_does(table, tmp_path, tiny_model, tiny_teacher):
    # the draws are the micro-batches' (by their index in the step), the replay buffer takes every rank's fresh
    # outputs at the step's end in micro-batch order, and the validation rows are split over the ranks
    sched, _ = build_schedule(table.path, "full", tmp_path / "sched", {"epochs": 3})
    one, two = tmp_path / "one", tmp_path / "two"
    distillm = ("--on-policy", "distillm", "--on-policy-max-new-tokens", "8", "--on-policy-engine", "transformers",
                "--distillm-init-threshold", "1", "--distillm-capacity", "6", "--distillm-valid-rows", "5")
    result = runner.invoke(app, args(sched, one, tiny_model, tiny_teacher, "--grad-accum", "2", *distillm))
    assert result.exit_code == 0, result.output
    ran = torchrun("-m", "syllabus.train", *args(sched, two, tiny_model, tiny_teacher, "--grad-accum", "1", *distillm))
    assert ran.returncode == 0, ran.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    choices = ("generate_micro_batches", "replay_micro_batches", "truth_micro_batches", "tokens", "generated_tokens")
    assert [[r[k] for k in choices] for r in b] == [[r[k] for k in choices] for r in a]
    assert sum(r["replay_micro_batches"] for r in a) >= 1 and sum(r["generate_micro_batches"] for r in a) >= 2
    for key in ("loss", "kd", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4), key
    validated = [(r["step"], r["threshold"]) for r in a if "valid_ce" in r]
    assert [(r["step"], r["threshold"]) for r in b if "valid_ce" in r] == validated and len(validated) == 3
    assert [r["valid_ce"] for r in b if "valid_ce" in r] == pytest.approx([r["valid_ce"] for r in a if "valid_ce" in r],
                                                                          rel=1e-5)
    wa, wb = final_weights(one), final_weights(two)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-4, msg=name)
