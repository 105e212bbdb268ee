"""``python -m client``: the remote commands, without torch."""

import sys

from client.cli import main

sys.exit(main())
