"""matplotlib for the benchmarks' and comparisons' figures: optional (the ``bench`` extra), never a reason for a run
to fail."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["pyplot", "save_figure"]


def pyplot(path: Path | str | None = None):
    """matplotlib's pyplot on the Agg backend, or None where matplotlib is not installed (one warning, naming the
    figure ``path`` that is skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: skipping %s (pip install 'seqmix[bench]')",
                       path if path is not None else "the plot")
        return None
    return plt


def save_figure(fig, path: Path | str, *, title: str | None = None, dpi: int = 120) -> Path:
    """Give ``fig`` its ``title`` (a suptitle), lay it out, write it (``dpi``) and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
