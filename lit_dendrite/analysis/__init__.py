"""Analysis of trained runs and sweeps.

``surfaces``: the inner net on a grid, the input pairs reaching it, their 90% region; ``xor``: quadratic fit,
saddle verdict, angular harmonics, saddle statistics; ``activations``: a learned one-argument activation's curve and
the interval of its inputs; ``curves``: learning curves from TensorBoard files; ``plots``: the figures, those of
robustness in ``robustness_plots``; ``callbacks``: the surface (or curve) image in TensorBoard; ``report``: the sweep
report, whose sections on the learned functions are in ``nonlinearity_report`` and on robustness in
``robustness_report``; ``locate``: the sweep a notebook reads, from ``notebooks/`` or the repository root.
"""
