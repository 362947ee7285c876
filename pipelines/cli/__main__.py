"""``python -m pipelines.cli``: what a submitted Ray job runs (the same as ``sslpipe``)."""

import sys

from pipelines.cli import main

sys.exit(main())
