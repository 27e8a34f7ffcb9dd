"""PNG plots for `curate inspect`: a table's difficulty histogram with a log-normal fit (SpectrumKD Fig. 3a), its
sorted spectrum with SpectrumKD's zones, and the curricula of several schedules on shared axes.

matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from syllabus.core.table import Table

UNITS = {
    "student_ce": "nats/token",
    "teacher_ce": "nats/token",
    "output_ce": "nats/token",
    "dds": "student_ce / teacher_ce",
    "rouge_l": "F1, 0-1",
}
ZONES = (("Early", "#7fc97f"), ("Continuous", "#80b1d3"), ("Late", "#fdb462"), ("Excluded", "#fb8072"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axis_label(column: str, summed: bool = False) -> str:
    """The axis label of a column: its unit, or for a summed CE (the schedules' default ranking) its count too."""
    from .schedules.common import CE_TOKEN_COUNTS

    if summed:
        return f"{column} x {CE_TOKEN_COUNTS[column]} (nats)"
    unit = UNITS.get(column)
    return f"{column} ({unit})" if unit else column


def ranked_values(frame: pl.DataFrame, column: str, ce_reduction: str, where: str) -> tuple[pl.DataFrame, bool]:
    """`frame` with `column` as the schedules rank by it (a CE summed over its tokens unless `ce_reduction` is
    "mean"; other columns as they are), and whether it was summed.

    Raises:
        ValueError: a sum is asked for but the table lacks the CE's token count.
    """
    from .schedules.common import CE_TOKEN_COUNTS, is_summed, reduce_ce

    if not is_summed(column, ce_reduction):
        return frame, False
    count = CE_TOKEN_COUNTS[column]
    if count not in frame.columns:
        raise ValueError(f"{where}: summing {column} over its tokens needs the column {count}, which the table "
                         "lacks; pass --ce-reduction mean")
    return reduce_ce(frame, column, "sum"), True


def lognormal_fit(values: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood log-normal parameters (mu, sigma) of positive values: mean and std of their logs."""
    logs = np.log(values)
    return float(logs.mean()), float(logs.std())


def plot_table(
    table: Table, plots_dir: Path, column: str = "student_ce", early_share: float = 0.1,
    excluded_share: float = 0.1, ce_reduction: str = "sum",
) -> list[Path]:
    """The difficulty histogram with a log-normal fit, and the sorted spectrum with SpectrumKD's zones.

    Args:
        table: a difficulty table (rows with status != "ok" and null/NaN values are left out).
        plots_dir: output directory (created).
        column: the difficulty column.
        early_share, excluded_share: SpectrumKD's zone shares (lambda_a, lambda_b) for the spectrum plot.
        ce_reduction: "sum" (a CE column summed over its tokens, as the schedules rank by default) or "mean" (the
            table's per-token mean).

    Returns:
        [<column>_histogram.png, <column>_spectrum.png].

    Raises:
        ValueError: the column is missing or holds no usable value.
    """
    from .schedules.common import HIGHER_IS_EASIER
    from .schedules.spectrum import zone_bounds

    frame = table.frame
    if column not in frame.columns:
        raise ValueError(f"{table.path}: no column {column}; columns: {', '.join(frame.columns)}")
    if "status" in frame.columns:
        frame = frame.filter(pl.col("status") == "ok")
    frame, summed = ranked_values(frame, column, ce_reduction, str(table.path))
    values = frame[column].cast(pl.Float64)
    values = values.filter(values.is_finite().fill_null(False)).to_numpy()
    if values.size == 0:
        raise ValueError(f"{table.path}: column {column} has no finite value in rows with status ok")
    plt = _pyplot()
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    bins = int(min(80, max(10, math.sqrt(values.size))))
    ax.hist(values, bins=bins, density=True, color="#80b1d3", edgecolor="white",
            label=f"{column}{' summed' if summed else ''} (n = {values.size})")
    positive = values[values > 0]
    if positive.size > 2 and column not in HIGHER_IS_EASIER:
        mu, sigma = lognormal_fit(positive)
        x = np.linspace(positive.min(), positive.max(), 400)
        pdf = np.exp(-((np.log(x) - mu) ** 2) / (2 * sigma**2)) / (x * sigma * math.sqrt(2 * math.pi))
        ax.plot(x, pdf, color="#d62728", lw=2, label=f"log-normal fit (mu = {mu:.2f}, sigma = {sigma:.2f})")
    ax.set_xlabel(_axis_label(column, summed))
    unit = "nats" if summed else UNITS.get(column)
    per_unit = unit and column not in HIGHER_IS_EASIER
    ax.set_ylabel(f"probability density (per {unit})" if per_unit else "probability density")
    ax.set_title(f"Difficulty distribution ({table.path.name})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    hist = plots_dir / f"{column}_histogram.png"
    fig.savefig(hist, dpi=120)
    plt.close(fig)

    # Easiest first: ascending difficulty, or descending ROUGE-L.
    ordered = np.sort(values)[::-1] if column in HIGHER_IS_EASIER else np.sort(values)
    n = ordered.size
    e1, e2, e3 = zone_bounds(n, early_share, excluded_share)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for (name, color), (start, end) in zip(ZONES, [(0, e1), (e1, e2), (e2, e3), (e3, n)]):
        ax.axvspan(start + 0.5, end + 0.5, color=color, alpha=0.35, lw=0, label=f"{name}: {end - start} samples")
    for boundary in (e1, e2, e3):
        ax.axvline(boundary + 0.5, color="0.3", lw=0.8, ls="--")
    ax.plot(np.arange(1, n + 1), ordered, color="black", lw=1.5, label=f"sorted {column}{' summed' if summed else ''}")
    ax.axvspan(0.5, e2 + 0.5, ymin=0.0, ymax=0.04, color="black", alpha=0.6,
               label=f"first window (M = {e2}), slides right by {e3 - e2}")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_xlabel("rank i of sample s_i (1 = easiest)")
    ax.set_ylabel(_axis_label(column, summed))
    ax.set_title(f"Difficulty spectrum with SpectrumKD zones (lambda_a = {early_share}, lambda_b = {excluded_share}, "
                 f"N = {n})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: the curve spans the whole box
    fig.tight_layout()
    spectrum = plots_dir / f"{column}_spectrum.png"
    fig.savefig(spectrum, dpi=120)
    plt.close(fig)
    return [hist, spectrum]


def plot_curricula(profiles: dict[str, pl.DataFrame], path: Path, column: str = "student_ce",
                   summed: bool = False) -> Path:
    """Schedules on shared epoch axes: samples per epoch, mean difficulty, temperature and kd_weight.

    Args:
        profiles: label -> per-epoch frame with epoch, num_samples, mean, temperature, kd_weight
            (`syllabus.curate.schedules.inspect.epoch_profile`).
        path: the PNG to write.
        column: what `mean` averages, for the axis label.
        summed: whether `mean` averages the CE summed over its tokens (the schedules' default ranking).

    Returns:
        `path`.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (count_ax, mean_ax, train_ax) = plt.subplots(3, 1, figsize=(8.5, 9), sharex=True,
                                                      gridspec_kw={"height_ratios": [3, 3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^Dv<>P"
    # Curricula often coincide (SRD and L2M-KD grow alike; ladders share values): each line is drawn thinner than
    # the one before it, so a line lying on another shows as a thin line inside a wide one, both colours visible.
    widths = [4.5 - 3.3 * i / max(len(profiles) - 1, 1) for i in range(len(profiles))]
    for i, (label, profile) in enumerate(profiles.items()):
        style = {"color": colors[i % len(colors)], "lw": widths[i]}
        total = int(profile["num_samples"].sum())
        epochs = profile["epoch"].to_numpy()
        marker = {"marker": markers[i % len(markers)], "ms": 2 + widths[i]}
        count_ax.plot(epochs, profile["num_samples"], **style, **marker, label=f"{label} ({total:,} samples in all)")
        if profile["mean"].null_count() < len(profile):
            mean_ax.plot(epochs, profile["mean"].to_numpy(), **style, **marker, label=label)
        # Settings hold for a whole epoch: steps, not slopes between epochs.
        train_ax.plot(epochs, profile["temperature"], **style, drawstyle="steps-mid")
        train_ax.plot(epochs, profile["kd_weight"], **style, ls="--", drawstyle="steps-mid")
    count_ax.set_ylabel("samples per epoch")
    count_ax.set_title("Curricula at a glance")
    count_ax.set_ylim(bottom=0)
    count_ax.legend(fontsize=8)
    mean_ax.set_ylabel(f"mean {_axis_label(column, summed)}\nover the epoch's samples")
    if mean_ax.lines:
        mean_ax.legend(fontsize=8)
    else:
        mean_ax.text(0.5, 0.5, f"no {column} available (table not readable)", ha="center", transform=mean_ax.transAxes)
    train_ax.plot([], [], color="0.3", lw=1.5, label="temperature")
    train_ax.plot([], [], color="0.3", lw=1.5, ls="--", label="kd_weight (1 - SFT weight)")
    train_ax.set_ylabel("per-epoch setting")
    train_ax.set_xlabel("epoch")
    train_ax.legend(fontsize=8, loc="best")
    for ax in (count_ax, mean_ax, train_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
