"""PNG plots: the difficulty histogram with a log-normal fit (SpectrumKD Fig. 3a), the sorted spectrum with its
zones, and curricula (per-epoch sample count and mean difficulty) of several schedules on shared axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from .table import Table

UNITS = {"student_ce": "nats/token", "teacher_ce": "nats/token", "output_ce": "nats/token", "dds": "ratio",
         "rouge_l": "F1"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_table(table: Table, plots_dir: Path, column: str = "student_ce", la: float = 0.1, lb: float = 0.1) -> list[Path]:
    """Histogram + log-normal fit, and the sorted spectrum with SpectrumKD's zones. Returns the PNG paths."""
    from .schedules.spectrum import zone_bounds

    plt = _pyplot()
    frame = table.frame
    if "status" in frame.columns:
        frame = frame.filter(pl.col("status") == "ok")
    values = frame[column].cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    if values.size == 0:
        raise ValueError(f"{table.path}: no values in column {column}")
    plots_dir.mkdir(parents=True, exist_ok=True)
    unit = UNITS.get(column, "")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.hist(values, bins=min(60, max(10, values.size // 10)), density=True, alpha=0.6, label=f"{column} (n={values.size})")
    positive = values[values > 0]
    if positive.size > 2:
        mu, sigma = np.log(positive).mean(), np.log(positive).std()
        x = np.linspace(positive.min(), positive.max(), 300)
        pdf = np.exp(-((np.log(x) - mu) ** 2) / (2 * sigma**2)) / (x * sigma * np.sqrt(2 * np.pi))
        ax.plot(x, pdf, "r-", lw=2, label=f"log-normal fit (mu={mu:.2f}, sigma={sigma:.2f})")
    ax.set_xlabel(f"{column} ({unit})")
    ax.set_ylabel("density")
    ax.set_title(f"Difficulty distribution: {column}")
    ax.legend()
    fig.tight_layout()
    hist = plots_dir / f"{column}_histogram.png"
    fig.savefig(hist, dpi=120)
    plt.close(fig)

    ordered = np.sort(values) if column != "rouge_l" else np.sort(values)[::-1]
    n = ordered.size
    e1, e2, e3 = zone_bounds(n, la, lb)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(np.arange(1, n + 1), ordered, color="black", lw=1.2, label=column)
    for (start, end), name, color in zip([(0, e1), (e1, e2), (e2, e3), (e3, n)],
                                         ["Early", "Continuous", "Late", "Excluded"],
                                         ["#8fd18f", "#9ec5fe", "#ffd58a", "#f5a3a3"]):
        ax.axvspan(start + 0.5, end + 0.5, color=color, alpha=0.5, label=f"{name} ({end - start})")
    ax.set_xlabel("rank (easiest first)")
    ax.set_ylabel(f"{column} ({unit})")
    ax.set_title(f"Difficulty spectrum with SpectrumKD zones (la={la}, lb={lb})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    spectrum = plots_dir / f"{column}_spectrum.png"
    fig.savefig(spectrum, dpi=120)
    plt.close(fig)
    return [hist, spectrum]


def plot_curricula(curricula: dict[str, pl.DataFrame], path: Path, column: str = "student_ce") -> Path:
    """Two panels sharing the epoch axis: samples per epoch, and the epoch's mean difficulty, one line per schedule."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for name, frame in curricula.items():
        top.plot(frame["epoch"], frame["num_samples"], marker="o", ms=3, label=name)
        bottom.plot(frame["epoch"], frame["mean"], marker="o", ms=3, label=name)
    top.set_ylabel("samples per epoch")
    top.set_title("Curricula at a glance")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.set_ylabel(f"mean {column} ({UNITS.get(column, '')})")
    bottom.set_xlabel("epoch")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
