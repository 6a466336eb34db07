"""matplotlib as every vitkit picture uses it: the file-only Agg backend (no display needed), set up once."""

from __future__ import annotations

import warnings
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # File names in titles may use scripts the default font lacks: draw boxes, do not warn per glyph.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    return plt


def save(fig, path: Path, dpi: int = 110) -> None:
    """Write the figure and free it (figures stay in pyplot's registry until closed)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
