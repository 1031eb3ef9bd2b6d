"""``python -m edgecompress`` = the ``edgecompress`` command."""

import sys

from edgecompress.cli import main

sys.exit(main())
