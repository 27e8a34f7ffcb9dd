"""The CUDA lane: what a GPU changes, checked on one (collected everywhere, skipped without CUDA with the reason;
`benchmarks/gpu/run.sh` runs it on the GPU machine, `pytest -m cuda`).

Each test builds tiny random Llamas on the GPU in bf16, as a user's run would load the real ones, and compares
with the CPU in fp32: packed rows under each attention implementation, the CE pass, the chunked KD loss and its
gradient, gradient checkpointing, and `train run` end to end (bf16 resolved from the card, LoRA with checkpointing,
torchrun's NCCL process group).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from helpers import full_run_args, scored_table, short_rows

pytestmark = pytest.mark.cuda
ATTENTIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2")


def tiny(attention: str = "sdpa", dtype=torch.bfloat16, device: str = "cuda", seed: int = 0, layers: int = 2,
         vocab: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
                         use_cache=False)
    model = LlamaForCausalLM(config).to(dtype)
    if attention != "sdpa":
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
        reloaded.load_state_dict(model.state_dict())
        model = reloaded
    return model.to(device).eval()


def requests(n: int = 12, vocab: int = 512, seed: int = 0):
    from syllabus.core.engines.base import ScoringRequest

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(12, 80, (1,), generator=g))
        out.append(ScoringRequest(torch.randint(1, vocab, (length,), generator=g).tolist(), length // 3))
    return out


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_packed_rows_are_exact_on_cuda_under_each_attention(attention):
    from syllabus.core.attention import flash_attention_installed
    from syllabus.core.packing import ONE_ROW, packing_is_exact, row_budget

    if attention == "flash_attention_2" and not flash_attention_installed():
        pytest.skip("flash-attn is not installed on this machine")
    model = tiny(attention)
    budget = row_budget([model], 24)
    assert packing_is_exact(model, budget)
    if attention == "flash_attention_2":  # varlen kernels read packed position ids in one row only
        assert budget == ONE_ROW
    else:  # the block-diagonal mask holds in every row
        assert budget == 24 and packing_is_exact(model, ONE_ROW)


def test_the_ce_pass_on_cuda_matches_the_cpu_fp32_reference():
    from syllabus.core.scoring import response_scores

    reqs = requests()
    reference, _ = response_scores(tiny(dtype=torch.float32, device="cpu"), reqs, 4096, 0, None)
    gpu = tiny()
    for pack in (None, 64):
        nll, top = response_scores(gpu, reqs, 4096, 0, pack, topk=8)
        for a, b in zip(nll, reference):
            assert abs(a - b) / b < 0.02
        assert all(t.ids.shape[1] == 8 and t.ids.device.type == "cpu" for t in top)


def test_the_chunked_kd_loss_and_its_gradient_on_cuda_match_the_fp32_reference():
    """bf16 autocast on the GPU (the trainer's precision there) against full-vocabulary fp32 logits on the CPU."""
    from syllabus.core.logits import logit_head
    from syllabus.train.data import Batch
    from syllabus.train.losses import Objective
    from syllabus.train.losses_reference import kd_divergence
    from syllabus.train.student import DistillStudent

    ids = torch.randint(1, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    rows, cols = torch.arange(2).repeat_interleave(40), torch.arange(7, 47).repeat(2)
    batch = Batch(ids, torch.ones_like(ids), None, rows, cols, ids[rows, cols + 1])
    objective = Objective("jsd", 1.0, 1.0)
    results = {}
    for device in ("cpu", "cuda"):
        student = tiny(dtype=torch.float32, device=device, seed=0).train()
        teacher = tiny(dtype=torch.float32 if device == "cpu" else torch.bfloat16, device=device, seed=1, layers=3)
        b = batch.to(device)
        if device == "cpu":
            logits = student(input_ids=b.input_ids).logits[b.rows, b.cols]
            with torch.no_grad():
                t_logits = teacher(input_ids=b.input_ids).logits[b.rows, b.cols]
            loss = kd_divergence("jsd", logits, t_logits, beta=0.5).sum()
        else:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                t_hidden = teacher.get_decoder()(input_ids=b.input_ids).last_hidden_state[b.rows, b.cols]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = DistillStudent(student, chunk_tokens=16)(b, objective, t_hidden, logit_head(teacher)).loss_sum
        loss.backward()
        grad = torch.cat([p.grad.flatten().float().cpu() for p in student.parameters() if p.grad is not None])
        results[device] = (loss.item(), grad)
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = results["cpu"], results["cuda"]
    assert abs(gpu_loss - cpu_loss) / cpu_loss < 0.03
    assert torch.nn.functional.cosine_similarity(cpu_grad, gpu_grad, dim=0) > 0.99


def test_gradient_checkpointing_on_cuda_computes_the_same_gradients():
    from syllabus.train.data import collate
    from syllabus.core.tokens import Encoded
    from syllabus.train.losses import Objective
    from syllabus.train.student import DistillStudent

    reqs = requests(6)
    batch = collate([Encoded(r.ids[: r.prompt_len], r.ids[r.prompt_len:], "ok") for r in reqs], 0, 256).to("cuda")
    grads = []
    for checkpointing in (False, True):
        student = tiny(dtype=torch.float32, seed=0).train()
        if checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sums = DistillStudent(student, chunk_tokens=32)(batch, Objective("sft", 1.0, 0.0), None, None)
        sums.loss_sum.backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def cuda_table(tmp_path_factory, dolly_rows, real_tokenizer_dir):
    return scored_table(tmp_path_factory.mktemp("cuda-table"), short_rows(dolly_rows, 16), 256, real_tokenizer_dir)


def train_args(table, tmp_path, tiny_model, tiny_teacher, out, *extra):
    return full_run_args(table, tmp_path, tiny_model, tiny_teacher, out, "--max-steps", "2", "--lr", "1e-3", *extra)


@pytest.mark.parametrize("extra", [(), ("--lora", "r=4", "--gradient-checkpointing")], ids=["full", "lora-gc"])
def test_train_run_on_cuda_trains_in_bf16_and_records_it(cuda_table, tmp_path, tiny_model, tiny_teacher, extra):
    from syllabus.train.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, train_args(cuda_table, tmp_path, tiny_model, tiny_teacher, out, *extra))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["config"]
    # sdpa is left out of the identity (runs from before the setting resume): flash-attention 2 where installed
    assert config["precision"] == "bf16" and config.get("attention", "sdpa") in ("sdpa", "flash_attention_2")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    assert (out / "checkpoints" / "final" / "config.json").exists()


PROBE = """
import sys

import torch.distributed as dist

backends = []
init = dist.init_process_group


def spy(*args, **kwargs):  # what accelerate asks torch for
    backends.append(kwargs.get("backend", args[0] if args else None))
    return init(*args, **kwargs)


dist.init_process_group = spy
from syllabus.train.cli import app

try:
    app(prog_name="train")
except SystemExit as exit:
    print("BACKENDS", backends, flush=True)
    raise
"""


def test_torchrun_on_one_gpu_trains_over_an_nccl_process_group(cuda_table, tmp_path, tiny_model, tiny_teacher):
    out = tmp_path / "run"
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    args = train_args(cuda_table, tmp_path, tiny_model, tiny_teacher, out)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(probe), *args],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nccl" in next(line for line in done.stdout.splitlines() if line.startswith("BACKENDS"))
    assert (out / "checkpoints" / "final" / "config.json").exists()
