"""``python -m trajebm.cli``: the `trajebm` console script."""

import sys

from trajebm.cli import main

sys.exit(main())
