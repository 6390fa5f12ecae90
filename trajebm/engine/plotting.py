"""Figures without a screen: matplotlib's pyplot on the Agg backend, imported on first use."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` drawing to files (Agg), so figures work on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
