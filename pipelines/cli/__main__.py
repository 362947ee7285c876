"""``python -m pipelines.cli``: what a submitted Ray job runs (the same as ``sslpipe``)."""

from pipelines.cli import entry

entry()
