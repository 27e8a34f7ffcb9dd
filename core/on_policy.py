"""The on-policy rules' names and the papers' values, shared by the schedule (each epoch's plan) and the trainer
(`train/on_policy.py` trains them). Pure Python: `curate schedule` checks them without importing torch.

gkd: a fixed share of each step's samples on the student's own responses (Agarwal et al. 2024, as the seeds run it).
distillm: DistiLLM's adaptive off-policy scheme (Ko et al. 2024): an adaptive threshold decides, per micro-batch,
between fresh student outputs, a replayed batch of earlier ones, and the ground truth; its loss is skew KL at 0.1
(the DistiLLM scripts' `--type adaptive-sfkl --kd-ratio 1.0`, skew_alpha 0.1).

GKD's loss in the SRD/DistiLLM lineage: DistiLLM's GKD script (scripts/gpt2/gkd/gkd_base.sh: --type mixed-jsd,
--kd-ratio 1.0) calls `js_distance` at its default lam 0.9, the mixture's weight on the student:
m = 0.1 p + 0.9 q, loss 0.9 KL(q || m) + 0.1 KL(p || m), which is our jsd at beta 0.1 (beta weighs the teacher).
TRL's GKDTrainer defaults to beta 0.5. kd_weight 1: no SFT term, as SRD B.3.3 and SpectrumKD run their GKD bases.
"""

from __future__ import annotations

MODES = ("off", "gkd", "distillm")
DEFAULT_SHARE = 0.5  # GKD's lambda as the seed papers run it: "50% student generated outputs" (SRD Table 1)
BASE_LOSS = {"gkd": ("jsd", {"beta": 0.1}), "distillm": ("skl", {"skew": 0.1})}  # each mode's own loss
KD_WEIGHT = 1.0  # both train on the divergence alone (kd_ratio 1.0): no SFT term
ON_POLICY_ENGINES = ("auto", "transformers", "vllm")  # what generates the student's responses (train/on_policy.py)
AUTO_ENGINE_RULE = "vLLM where it is installed and the run can use it (one process, no LoRA), else transformers"


def check_on_policy(mode: str, share: float) -> None:
    """Raise ValueError unless `mode` is a known rule and `share` in [0, 1] (0 when the mode is off, and for
    distillm, whose share is its adaptive threshold's)."""
    if mode not in MODES:
        raise ValueError(f"on_policy must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"on_policy_share must be a number in [0, 1], got {share!r}")
    if mode == "off" and share:
        raise ValueError(f"on_policy_share {share:g} needs an on-policy mode (on_policy: gkd)")
    if mode == "distillm" and share:
        raise ValueError(f"on_policy_share {share:g}: distillm draws its own share (its adaptive threshold); give "
                         "the share with on_policy: gkd")
