"""Stage 6 of the pipeline: the ``attngen`` command line (one module per subcommand)."""
