"""Meshes: marching cubes over callable fields (extract.py), frames and file formats (export.py)."""

from .extract import ExtractionConfig, Mesh, extract_mesh

__all__ = ["ExtractionConfig", "Mesh", "extract_mesh"]
