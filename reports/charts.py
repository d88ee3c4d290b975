"""Charts for self-contained reports: matplotlib figures rendered to base64 PNG for data: URIs.

A bare Figure with the Agg canvas, never pyplot, so a host process's backend and pyplot's global
figure state are left alone (reports are also written from inside pytest and other tools).
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any


def new_figure(width: float, height: float) -> Any | None:
    """An empty figure of that size in inches, or None when matplotlib is not importable."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def png_base64(figure: Any) -> str:
    """The figure as a base64 PNG (tight layout)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a glyph missing from the font: charts are decoration
        figure.tight_layout()
        figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
