"""Benchmark scripts over the edgecompress library; run each from the repository root as ``python -m benchmarks.NAME``.

Not part of the installed package: every script imports the library's own loaders, loops and losses and only adds
the experiment's protocol and its tables.
"""
