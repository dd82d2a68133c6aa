"""``python -m dpipe``: the ``dpipe`` command (flows run their steps so, with this interpreter)."""

import sys

from dpipe.cli import main

sys.exit(main())
