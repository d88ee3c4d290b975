"""`python -m chatspec`: the same as the `chatspec` command."""

import sys

from chatspec.cli import main

sys.exit(main())
