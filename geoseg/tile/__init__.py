"""``geoseg tile``: chunk scenes + dated labels into a sampled, labelled tile dataset."""

from geoseg.tile.run import TileConfig, TileResult, run

__all__ = ["TileConfig", "TileResult", "run"]
