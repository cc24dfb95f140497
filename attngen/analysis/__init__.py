"""Stage 3 of the pipeline: block maps (which tiles are full, partial, empty) and costs."""
