"""Stage 2 of the pipeline: the computation as a small graph, and the passes that lower it."""
