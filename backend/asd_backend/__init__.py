"""ASD Studio backend: teachers, score distillation, NeRF, meshes, the job server and the CLI."""

__version__ = "0.1.0"
