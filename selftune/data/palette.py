"""Class colours for pictures of masks: the r,g,b of classes.csv, or a default palette."""

from __future__ import annotations

import torch

# Colours for classes.csv files without r,g,b columns (tab10, then more); cycled when K is larger.
DEFAULT_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
)


def class_palette(colors: tuple[tuple[int, int, int], ...] | None, num_classes: int) -> torch.Tensor:
    """uint8 [K + 1, 3]: class colours, then the colour of ignored / rejected pixels (black, or white
    when a class is already black)."""
    rows = list(colors) if colors else [DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(num_classes)]
    rows.append((255, 255, 255) if (0, 0, 0) in rows else (0, 0, 0))
    return torch.tensor(rows, dtype=torch.uint8)


__all__ = ["DEFAULT_PALETTE", "class_palette"]
