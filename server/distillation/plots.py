"""The run's plots: one PNG (``plots/run.png``) drawn from ``metrics.jsonl`` while a distillation runs.

Panels: student test accuracy and KD loss against training seconds, and, per synthesis, what the inversion
makes: teacher agreement with the requested classes and its confidence, pseudo-label entropy and classes
present, the raw BN-statistics loss, and precision / recall / coverage of the condensed set's teacher
features by the synthetic ones. A panel whose metric the run does not log (e.g. ``cs-only`` synthesises
nothing) says so instead of staying blank.

``plot_feature_tsne`` (``plots/tsne.png``, drawn once at the end of a run by ``save_end_plots``): a t-SNE
(scikit-learn) of the teacher's penultimate features of the condensed samples (crosses), the last synthetic
batch (dots) and, when the server has its test split, real test images (faded), coloured by class: the
paper's Figure 3, showing whether the synthetic samples fall where the real and condensed ones do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.io import atomic_path

TSNE_REAL = 500  # real test images in the t-SNE (the first ones of the split)
TSNE_MAX_PER_GROUP = 1000  # condensed / synthetic samples at most (the first ones)

PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("student test accuracy", ("accuracy",), "eval"),
    ("KD loss", ("kd_loss",), "epoch"),
    ("teacher on synthetic batches", ("agreement", "confidence"), "epoch"),
    ("pseudo-labels", ("label_entropy", "classes_present_share"), "epoch"),
    ("BN-statistics loss (unweighted)", ("bn_raw",), "epoch"),
    ("synthetic vs condensed features", ("precision", "recall", "coverage"), "epoch"),
)


def _series(records: Sequence[dict[str, Any]], event: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        if record.get("event") != event or "seconds" not in record:
            continue
        value = record.get(key)
        if key == "classes_present_share" and "classes_present" in record and "label_histogram" in record:
            value = record["classes_present"] / max(1, len(record["label_histogram"]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(float(record["seconds"]))
            ys.append(float(value))
    return xs, ys


def plot_run(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw the six panels of ``records`` (metrics.jsonl lines) into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, (name, keys, event) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for key in keys:
            xs, ys = _series(records, event, key)
            if xs:
                ax.plot(xs, ys, label=key.replace("_share", " / classes"), marker="." if len(xs) < 30 else None)
                drawn = True
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training seconds")
        if not drawn:
            ax.text(0.5, 0.5, "not logged by this run", ha="center", va="center", transform=ax.transAxes)
        elif len(keys) > 1:
            ax.legend(fontsize=8)
        if keys == ("bn_raw",) and drawn:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


@torch.no_grad()
def teacher_features(teacher: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features (``forward(x, return_features=True)``) of normalised ``images``, on CPU."""
    device = next(teacher.parameters()).device
    chunks = [teacher(images[i:i + batch_size].to(device), return_features=True)[1].float().flatten(1).cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def embed_2d(features: torch.Tensor, seed: int = 0) -> Any:
    """t-SNE of ``features`` (N x D) to N x 2, after PCA to 50 dimensions when D is larger."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    data = features.numpy().astype(np.float64)
    if data.shape[1] > 50 and data.shape[0] > 50:
        data = PCA(n_components=50, random_state=seed).fit_transform(data)
    perplexity = float(max(2.0, min(30.0, (len(data) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)


def plot_feature_tsne(teacher: torch.nn.Module, groups: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      path: str | Path, class_names: Sequence[str], title: str = "") -> Path:
    """One t-SNE of the teacher's features of every group (``name -> (normalised images, labels)``; groups
    named ``real``, ``condensed``, ``synthetic`` get faded dots, crosses and dots), coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    kept = {k: (x[:TSNE_MAX_PER_GROUP], y[:TSNE_MAX_PER_GROUP]) for k, (x, y) in groups.items() if len(x)}
    if sum(len(x) for x, _ in kept.values()) < 5:
        raise ValueError("fewer than 5 samples to embed")
    features = torch.cat([teacher_features(teacher, x) for x, _ in kept.values()])
    points = embed_2d(features)
    styles = {"real": {"marker": ".", "alpha": 0.15, "s": 12}, "condensed": {"marker": "x", "alpha": 0.9, "s": 30},
              "synthetic": {"marker": "o", "alpha": 0.7, "s": 10}}
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "turbo")
    fig, ax = plt.subplots(figsize=(7.5, 6.5), constrained_layout=True)
    start = 0
    for name, (_, labels) in kept.items():
        xy = points[start:start + len(labels)]
        start += len(labels)
        colours = cmap(labels.numpy() % 10 if len(class_names) <= 10 else labels.numpy() / max(1, len(class_names) - 1))
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, label=f"{name} ({len(labels)})", **styles.get(name, {}))
    legend = ax.legend(fontsize=8, loc="best")
    for handle in legend.legend_handles:  # the marker says the group; colours are classes
        handle.set_color("dimgray")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of teacher features (colour: class)", fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def save_end_plots(distiller: Any, test_set: Any = None) -> Path | None:
    """``plots/tsne.png`` of a finished ``Distiller`` run: condensed samples, its last synthetic batch and (with
    ``test_set``, the teacher dataset's ``LabeledImages``) real test images. Returns the path, or None with a
    warning when the teacher has no features or the plot fails (never worth failing a finished run over)."""
    import warnings

    card = distiller.card
    if int(getattr(distiller.teacher, "feature_dim", 0) or 0) <= 0:
        return None
    groups: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if test_set is not None and len(test_set):
        real = test_set.subset(range(min(TSNE_REAL, len(test_set))))
        groups["real"] = (_normalise(real.images, card.mean, card.std), real.labels)
    if distiller.condensed is not None:
        groups["condensed"] = (distiller.condensed.images.cpu(), distiller.condensed.labels.cpu())
    batch = distiller.last_batch
    if batch is not None:
        groups["synthetic"] = (batch.images.cpu(), batch.targets.cpu())
    names = list(card.class_names) or [str(c) for c in range(card.num_classes)]
    try:
        return plot_feature_tsne(distiller.teacher.eval(), groups, distiller.run.path / "plots" / "tsne.png", names,
                                 f"t-SNE of {card.arch} features: {distiller.cfg.base} {distiller.cfg.mode}")
    except (OSError, ValueError, RuntimeError) as error:
        warnings.warn(f"t-SNE plot not written: {error}", stacklevel=2)
        return None


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    shape = (1, len(mean), 1, 1)
    pixels = images.float() / 255.0
    return (pixels - torch.tensor(list(mean)).view(shape)) / torch.tensor(list(std)).view(shape)
