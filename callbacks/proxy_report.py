"""ProxyReport: logs, prints and plots what the proxy datamodule selected, when fitting starts."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ecos_lightning.frameworks import bases
from ecos_lightning.files import atomic_write_bytes


class ProxyReport(*bases("Callback")):
    """At ``on_fit_start``, reports ``trainer.datamodule.summary()`` (see ``ProxyDataModule.summary``).

    Logs the scalars ``proxy/size``, ``proxy/epsilon`` (when finite), ``proxy/bytes_down``,
    ``proxy/bytes_up``, ``proxy/label_accuracy`` (when known) and ``proxy/domain/<name>`` (share of
    the proxy) to every logger; prints a one-line summary; writes ``<name>.json`` and ``<name>.png``
    into the run's log folder (``trainer.log_dir``, else ``trainer.default_root_dir``).
    """

    def __init__(self, name: str = "proxy_report"):
        self.name = name

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "summary", None)):
            rank_zero_warn("ProxyReport: the datamodule has no summary(); no proxy report is written")
            return
        summary = datamodule.summary()
        proxy = getattr(datamodule, "proxy", None)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir must be read on every rank
        metrics = report_metrics(summary)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        rank_zero_info(describe(summary))
        if trainer.is_global_zero:
            scores = proxy.cluster_scores if proxy is not None else None
            report = {**summary, "epsilon": _finite_or_none(summary.get("epsilon")),
                      "epsilon_rdp": _finite_or_none(summary.get("epsilon_rdp")), "cluster_scores": scores}
            atomic_write_bytes(folder / f"{self.name}.json", json.dumps(report, indent=2).encode())
            selected = [c for c in proxy.clusters if c >= 0] if proxy is not None else []
            plot_proxy_report(summary, scores, folder / f"{self.name}.png", selected_clusters=selected)


def report_metrics(summary: dict) -> dict[str, float]:
    """The scalars of a proxy summary, named ``proxy/...``."""
    metrics = {"proxy/size": float(summary["size"])}
    for key in ("epsilon", "epsilon_rdp"):
        if _finite_or_none(summary.get(key)) is not None:
            metrics[f"proxy/{key}"] = float(summary[key])
    for key in ("bytes_down", "bytes_up", "label_accuracy", "labelled"):
        if summary.get(key) is not None:
            metrics[f"proxy/{key}"] = float(summary[key])
    domains = summary.get("domains") or {}
    total = sum(domains.values())
    for name, count in domains.items():
        metrics[f"proxy/domain/{name}"] = count / total if total else 0.0
    return metrics


def privacy_text(summary: dict, epsilon_symbol: str = "epsilon") -> str:
    """``epsilon=0.434 at delta=1e-05 (PLD; RDP 0.478)`` for a proxy summary, or ``not private``."""
    epsilon, rdp = summary.get("epsilon"), summary.get("epsilon_rdp")
    if epsilon is None or math.isinf(epsilon):
        return "not private"
    beside = f" (PLD; RDP {rdp:.3g})" if rdp is not None else ""
    return f"{epsilon_symbol}={epsilon:.3g} at delta={summary.get('delta'):g}{beside}"


def describe(summary: dict) -> str:
    """One human-readable line about a proxy summary."""
    privacy = privacy_text(summary)
    parts = [f"proxy ({summary.get('sampler')}): {summary['size']} images", privacy,
             f"{summary.get('bytes_down', 0) / 1024:.1f} KiB down / {summary.get('bytes_up', 0) / 1024:.1f} KiB up"]
    if summary.get("label_accuracy") is not None:
        parts.append(f"label accuracy {summary['label_accuracy']:.1%}" + labelled_text(summary))
    domains = summary.get("domains") or {}
    total = sum(domains.values())
    if total:
        parts.append("domains " + ", ".join(f"{name} {count / total:.0%}" for name, count in domains.items()))
    return "; ".join(parts)


def labelled_text(summary: dict) -> str:
    """`` (80% of images labelled)`` where some of the proxy is unlabelled, else empty."""
    labelled = summary.get("labelled")
    return f" ({labelled:.0%} of images labelled)" if labelled is not None and labelled < 1 else ""


def plot_proxy_report(summary: dict, cluster_scores: list | None, path, selected_clusters=None) -> Path:
    """Draw the proxy report to a PNG at ``path`` (written atomically) and return the path.

    Panels: cluster scores sorted descending (when given; clusters in ``selected_clusters`` — those
    the proxy drew images from — are coloured apart), the proxy's class histogram, and its domain
    composition (when ``summary`` has ``domains``).
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and never opens a display
    from matplotlib.ticker import MaxNLocator

    domains = summary.get("domains") or {}
    panels = ["scores"] * (cluster_scores is not None) + ["classes"] + ["domains"] * bool(domains)
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    fig.suptitle(f"Proxy set: {summary.get('sampler')}, {summary['size']} images, {privacy_text(summary, 'ε')}")
    for ax, panel in zip(axes, panels):
        if panel == "scores":
            _plot_scores(ax, cluster_scores, set(selected_clusters or ()))
        elif panel == "classes":
            histogram = summary.get("class_histogram") or []
            ax.bar(range(len(histogram)), histogram, color="tab:blue")
            ax.set(title="Class histogram", xlabel="class", ylabel="images")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if not any(histogram):
                ax.text(0.5, 0.5, "unlabelled", ha="center", va="center", transform=ax.transAxes)
        else:
            names = list(domains)
            counts = [domains[n] for n in names]
            bars = ax.barh(names, counts, color="tab:green")
            ax.bar_label(bars, labels=[f"{c / max(sum(counts), 1):.0%}" for c in counts], padding=3)
            ax.margins(x=0.15)
            ax.invert_yaxis()
            ax.set(title="Domain composition", xlabel="images")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _plot_scores(ax, scores: list, selected: set) -> None:
    from matplotlib.ticker import MaxNLocator

    order = sorted(range(len(scores)), key=lambda c: -scores[c])
    values = [scores[c] for c in order]
    width = 0.8 if len(order) <= 40 else 1.0  # gaps between few bars; a solid profile for many
    if selected:
        colors = ["tab:orange" if c in selected else "lightgray" for c in order]
        ax.bar(range(len(order)), values, width=width, color=colors)
        ax.legend(handles=[_patch("tab:orange", "in proxy"), _patch("lightgray", "not drawn from")],
                  loc="upper right", frameon=False)
    else:
        ax.bar(range(len(order)), values, width=width, color="tab:orange")
    ax.set(title="Noisy cluster scores (sorted)", xlabel="cluster rank", ylabel="clipped score")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _patch(color: str, label: str):
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _finite_or_none(value):
    return value if value is not None and math.isfinite(value) else None
