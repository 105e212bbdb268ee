import sys

from textinv.cli import main

sys.exit(main())
