"""`python -m load`: see `load.cli`."""

import sys

from load.cli import main

sys.exit(main())
