"""``python -m textinv.cli``: the ``textinv`` command."""

import sys

from textinv.cli import main

sys.exit(main())
