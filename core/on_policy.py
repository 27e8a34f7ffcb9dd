"""The on-policy rules' names and the papers' values, shared by the schedule (each epoch's plan) and the trainer
(`train/on_policy.py` trains them). Pure Python: `curate schedule` checks them without importing torch.

GKD's loss in the SRD/DistiLLM lineage: DistiLLM's GKD script (scripts/gpt2/gkd/gkd_base.sh: --type mixed-jsd,
--kd-ratio 1.0) calls `js_distance` at its default lam 0.9, the mixture's weight on the student:
m = 0.1 p + 0.9 q, loss 0.9 KL(q || m) + 0.1 KL(p || m), which is our jsd at beta 0.1 (beta weighs the teacher).
TRL's GKDTrainer defaults to beta 0.5. kd_weight 1: no SFT term, as SRD B.3.3 and SpectrumKD run their GKD bases.
"""

from __future__ import annotations

MODES = ("off", "gkd")
DEFAULT_SHARE = 0.5  # GKD's lambda as the seed papers run it: "50% student generated outputs" (SRD Table 1)
GKD_LOSS = "jsd"
GKD_LOSS_PARAMS = {"beta": 0.1}
GKD_KD_WEIGHT = 1.0


def check_on_policy(mode: str, share: float) -> None:
    """Raise ValueError unless `mode` is a known rule and `share` in [0, 1] (0 when the mode is off)."""
    if mode not in MODES:
        raise ValueError(f"on_policy must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"on_policy_share must be a number in [0, 1], got {share!r}")
    if mode == "off" and share:
        raise ValueError(f"on_policy_share {share:g} needs an on-policy mode (on_policy: gkd)")
