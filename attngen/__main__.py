"""``python -m attngen``: the command line, as the ``attngen`` program runs it."""
import sys

from .cli.main import main

sys.exit(main())
