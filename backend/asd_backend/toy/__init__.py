"""The toy world: seven exact shapes in eight paints, a renderer for them, and a teacher trained on it.

No Stable Diffusion weights reach these machines, so the project trains a small SD-shaped pipeline
on renders of objects whose geometry and colour are known exactly (`world.py`, `render.py`,
`train_teacher.py`). The product loads it like any diffusers pipeline (`--teacher toy`), and
benchmarks judge what it makes against the truth (`judge.py`, `asd bench toy`).
"""
