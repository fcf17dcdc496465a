"""Pictures of convolutions: filter galleries, feature maps, kernels, single steps and GIFs.

Everything draws on matplotlib's Agg canvas (no screen), imported on first use, so
``import convlayers`` stays fast. The plotting functions return a
``matplotlib.figure.Figure``; write one with :func:`save_figure` (atomic). :func:`animate`
writes a GIF. :func:`sliding_plan` is the drawing-free description of every step of a layer,
reusable by other front ends (a web page, say).

Examples
--------
>>> from convlayers.viz import sliding_plan
>>> len(sliding_plan("avg_pool", 4, 2, stride=None).frames)
4
"""

from convlayers.viz.animate import animate, animation_frame, output_values, window_sum
from convlayers.viz.frames import OPS, Frame, SlidingPlan, sliding_plan
from convlayers.viz.gallery import (
    SEED_FILTERS,
    filter_gallery,
    plot_feature_maps,
    plot_kernels,
    save_figure,
    to_gray,
)
from convlayers.viz.learned import kernel_patches, learned_vs_handmade
from convlayers.viz.step import plot_conv_step, step_terms

__all__ = [
    "OPS",
    "SEED_FILTERS",
    "Frame",
    "SlidingPlan",
    "animate",
    "animation_frame",
    "filter_gallery",
    "kernel_patches",
    "learned_vs_handmade",
    "output_values",
    "plot_conv_step",
    "plot_feature_maps",
    "plot_kernels",
    "save_figure",
    "sliding_plan",
    "step_terms",
    "to_gray",
    "window_sum",
]
