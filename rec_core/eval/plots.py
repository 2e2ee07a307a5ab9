"""PNG pictures of training and evaluation, for people to look at."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on batch machines
import matplotlib.pyplot as plt


def training_curves_png(curves: dict[str, list[float]], title: str) -> bytes:
    """Loss per epoch beside validation per round; ``valid_at_epoch`` (when present) places the rounds, which may
    run several times an epoch."""
    valid_at = curves.get("valid_at_epoch")
    losses = [k for k in curves if "loss" in k]
    metrics = [k for k in curves if k not in losses and k != "valid_at_epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in losses:
        axes[0].plot(range(1, len(curves[key]) + 1), curves[key], marker="o", label=key)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[0].legend()
    for key in metrics:
        xs = valid_at if valid_at and len(valid_at) == len(curves[key]) else range(1, len(curves[key]) + 1)
        axes[1].plot(xs, curves[key], marker="o", label=key)
    axes[1].set(title="validation", xlabel="epoch")
    axes[1].legend()
    fig.suptitle(title)
    return figure_png(fig)


def comparison_png(models: dict[str, dict[str, float]], metrics: list[str], title: str) -> bytes:
    """Grouped bars: one group per metric, one bar per model."""
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(metrics)), 4.5))
    width = 0.8 / max(len(models), 1)
    for i, (name, values) in enumerate(models.items()):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [values.get(m, 0.0) or 0.0 for m in metrics], width, label=name)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set(title=title)
    ax.legend()
    return figure_png(fig)


def figure_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
