"""One figure style for the paper: seaborn "paper" context, ticks, the colour-blind palette,
fonts sized for the printed width (figures are made at their final size: a 3.25 in column or
a 6.75 in page), TrueType fonts in the PDFs, constrained layout (no overlapping text)."""

from __future__ import annotations

import contextlib
from pathlib import Path


COLUMN_IN = 3.25
PAGE_IN = 6.75
FONT_PT = 8
SMALL_PT = 7
DPI = 150
# runs that did not finish: a marker each, never dropped silently
INCOMPLETE = {"failed": "X", "diverged": "v", "interrupted": "s", "running": ">", "pending": ">", "missing": "o"}
INCOMPLETE_COLOR = "#444444"


def palette(n: int = 10):
    import seaborn as sns
    return sns.color_palette("colorblind", max(n, 1))


def rc() -> dict:
    import seaborn as sns
    from cycler import cycler
    out = {}
    out.update(sns.axes_style("ticks"))
    out.update(sns.plotting_context("paper"))
    out.update({
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans"],  # has β γ ε π ‖ √
        "font.size": FONT_PT, "axes.labelsize": FONT_PT, "axes.titlesize": FONT_PT,
        "xtick.labelsize": SMALL_PT, "ytick.labelsize": SMALL_PT,
        "legend.fontsize": SMALL_PT, "legend.title_fontsize": SMALL_PT, "figure.titlesize": FONT_PT,
        "axes.prop_cycle": cycler(color=palette(10)),
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
        "lines.linewidth": 1.2, "lines.markersize": 4, "errorbar.capsize": 2,
        "legend.frameon": False,
        "figure.dpi": DPI, "savefig.dpi": DPI,
        "figure.constrained_layout.use": True,
        "pdf.fonttype": 42, "ps.fonttype": 42,  # embedded TrueType: editable, no Type-3
        "mathtext.default": "regular",
    })
    return out


@contextlib.contextmanager
def paper_style():
    import matplotlib.pyplot as plt
    with plt.rc_context(rc()):
        yield


def new_figure(width_in: float, height_in: float, nrows: int = 1, ncols: int = 1, **kw):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in, height_in), squeeze=False, layout="constrained", **kw)
    return fig, axes


def save(fig, base: Path) -> list[Path]:
    """``base``.pdf (vector) and ``base``.png; returns the paths."""
    import matplotlib.pyplot as plt
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("pdf", "png"):
        p = base.with_suffix(f".{ext}")
        fig.savefig(p, dpi=DPI, metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(p)
    plt.close(fig)
    return out


def texts_outside(fig) -> list[str]:
    """Drawn texts that stick out of the figure (would be cut off)."""
    W, H = fig.bbox.width, fig.bbox.height
    return [t.get_text() for t, bb in _drawn_texts(fig)
            if bb.x0 < -1 or bb.y0 < -1 or bb.x1 > W + 1 or bb.y1 > H + 1]


def _drawn_texts(fig) -> list:
    """(Text, window extent) of every text that is drawn: titles, labels, legends, ticks in view."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    candidates = list(fig.texts)
    for lg in fig.legends:
        candidates += lg.get_texts()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        candidates += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label] + list(ax.texts)
        if ax.get_legend():
            candidates += ax.get_legend().get_texts()
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            eps = (hi - lo) * 1e-9
            for tick in axis.get_major_ticks():  # only the ticks inside the view are drawn
                if lo - eps <= tick.get_loc() <= hi + eps:
                    candidates += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    texts = []
    for t in candidates:
        if not t.get_visible() or not t.get_text().strip():
            continue
        bb = t.get_window_extent(renderer)
        if bb.width > 0 and bb.height > 0:
            texts.append((t, bb))
    return texts


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap (should be none)."""
    texts = [(t, bb.shrunk(0.98, 0.9)) for t, bb in _drawn_texts(fig)]  # ignore a touch of glyph padding
    bad = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = texts[i][1], texts[j][1]
            if a.overlaps(b):
                bad.append((texts[i][0].get_text(), texts[j][0].get_text()))
    return bad
