"""Texture editing on fixed geometry: per-view UV rasterization (raster.py) and the edit loop (edit.py)."""
