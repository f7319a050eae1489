"""Analysis of trained runs and sweeps.

``surfaces``: the inner net on a grid, the input pairs reaching it, their 90% region; ``xor``: quadratic fit,
saddle verdict, angular harmonics, saddle statistics; ``curves``: learning curves from TensorBoard files;
``plots``: the figures; ``callbacks``: the surface image in TensorBoard; ``report``: the sweep report.
"""
