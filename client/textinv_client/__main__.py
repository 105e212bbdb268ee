"""``python -m textinv_client``: the remote commands, without torch."""

import sys

from textinv_client.cli import main

sys.exit(main())
