"""Named, seeded recipes that make the converged teachers the demo and the experiments start from.

``python -m edgecompress.presets.train_teacher NAME`` trains one (see :mod:`edgecompress.presets.train_teacher`).
"""
