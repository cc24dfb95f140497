"""Stage 5 of the pipeline: load generated kernels, launch them, cache them, expose torch ops."""
