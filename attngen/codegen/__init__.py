"""Stage 4 of the pipeline: Triton source from the lowered IR, through jinja2 templates."""
