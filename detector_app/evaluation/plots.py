"""PNG plots of a comparison: precision–recall per class, and a per-second timeline of truth against
each model that shows at a glance where a model misses (matplotlib, off-screen)."""

from __future__ import annotations

from pathlib import Path

from detector_app.evaluation.metrics import per_second_timeline
from detector_app.evaluation.runner import EvalConfig, ModelResult

_PRESENT, _ABSENT, _UNSCORED = "#2b8a3e", "#e9ecef", "#ffffff"


def plot_all(cfg: EvalConfig, results: list[ModelResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    out = [p for p in (_pr(cfg, results, c.label) for c in results[0].classes) if p is not None]
    out.append(_timeline(cfg, results))
    return out


def _pr(cfg: EvalConfig, results: list[ModelResult], label: str) -> Path | None:
    import matplotlib.pyplot as plt

    curves = [(m.spec.name, c) for m in results for c in m.classes if c.label == label and c.pr_precision]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 4), dpi=80)
    for name, c in curves:
        ax.plot(c.pr_recall, c.pr_precision, label=f"{name} (AP50 {c.ap50:.2f})" if c.ap50 is not None else name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{label}: precision–recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = cfg.out_dir / f"pr_{''.join(ch if ch.isalnum() else '_' for ch in label)}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _timeline(cfg: EvalConfig, results: list[ModelResult]) -> Path:
    """One band per video: truth on top, then each model; a red cell = the model disagrees with truth."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = 1 + len(results)
    n_videos = len(results[0].runs)
    fig, axes = plt.subplots(n_videos, 1, figsize=(9, 0.45 * rows * n_videos + 0.9), dpi=80, squeeze=False)
    for vi in range(n_videos):
        ax = axes[vi][0]
        truth, _ = per_second_timeline(results[0].runs[vi], cfg.conf)
        bands = [("truth", truth, None)]
        for m in results:
            _, pred = per_second_timeline(m.runs[vi], cfg.conf)
            bands.append((m.spec.name, pred, truth))
        for row, (_, cells, ref) in enumerate(bands):
            y = rows - 1 - row
            for s, v in enumerate(cells):
                colour = _UNSCORED if v < 0 else (_PRESENT if v else _ABSENT)
                wrong = ref is not None and v >= 0 and ref[s] >= 0 and v != ref[s]
                ax.add_patch(plt.Rectangle((s, y + 0.1), 0.95, 0.8, color="#e03131" if wrong else colour, lw=0))
        ax.set_xlim(0, len(truth))
        ax.set_ylim(0, rows)
        ax.set_yticks([rows - 0.5 - i for i in range(rows)], [b[0] for b in bands], fontsize=8)
        ax.set_title(cfg.videos[vi].name, fontsize=9)
        ax.set_xlabel("second of video", fontsize=8)
    fig.legend(handles=[Patch(color=_PRESENT, label="animal present"), Patch(color=_ABSENT, label="none"),
                        Patch(color="#e03131", label="model wrong"), Patch(facecolor=_UNSCORED, edgecolor="#999",
                                                                           label="not scored (entering/leaving)")],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = cfg.out_dir / "timeline.png"
    fig.savefig(path)
    plt.close(fig)
    return path
