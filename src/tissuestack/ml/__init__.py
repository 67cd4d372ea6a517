"""Machine-learning front ends: datasets of image tiles for PyTorch (torch is optional and imported on use)."""

from tissuestack.ml._tiles import ImageTilesDataset

__all__ = ["ImageTilesDataset"]
