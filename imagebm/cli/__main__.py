"""``python -m imagebm.cli``: the `imagebm` console script."""

import sys

from imagebm.cli import main

sys.exit(main())
