"""The table of schedule methods. A method is one file with a frozen config (its parameters, the paper's defaults,
checked in `__post_init__`, and `columns()`, the table columns it ranks by) and a pure
`build(frame, config, seed, reverse) -> list[Epoch]`; adding one means that file and one line below.

The table names modules rather than importing them, so the CLI can list methods (and `curate --help` stay instant)
without importing polars and numpy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple


class Method(NamedTuple):
    config: type  # a frozen dataclass; `curate schedule --help-params` lists its fields and defaults
    build: Callable[..., list[Any]]  # (frame, config, seed, reverse) -> list[Epoch]


# name: (module in this package, config class, build function, one-line summary)
METHODS: dict[str, tuple[str, str, str, str]] = {
    "spectrum": ("spectrum", "SpectrumConfig", "build", "SpectrumKD: difficulty zones and a sliding window"),
    "srd": ("srd", "SRDConfig", "build", "SRD: ROUGE-L x CE rank fusion, keep the top, baby-step stages"),
    "l2m": ("l2m", "L2MConfig", "build", "L2M-KD: ROUGE-L stages, skew KL and KD weight per stage"),
    "dakd": ("dakd", "DAKDConfig", "build", "DA-KD: DDS-stratified sampling, shrinking epochs, BDL loss"),
    "full": ("baselines", "FullConfig", "build_full", "every usable row every epoch"),
    "random": ("baselines", "RandomConfig", "build_random", "random subsets (DA-KD's w/o-DDS ablation)"),
}


def load_method(name: str) -> Method:
    """The config class and build function of method `name` (a key of METHODS)."""
    module_name, config_name, build_name, _ = METHODS[name]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return Method(getattr(module, config_name), getattr(module, build_name))
