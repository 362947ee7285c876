"""What a run shows the person at the terminal: phases, one training progress bar, one line per
epoch, and nothing of Ray's or MLflow's own logging unless asked (``-v``).

Quiet by default: the loggers of Ray, MLflow and the libraries under them, and Python warnings,
go to the run's log file (``<run dir>/sslpipe.log``, its path printed once), held in memory until
the run directory is known. On a terminal the training bar is tqdm's, redrawn in place; when
output is a file or a pipe it is a plain line every ``interval`` seconds, with no control codes.
"""

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

THIRD_PARTY = (
    "ray",
    "mlflow",
    "alembic",
    "py.warnings",
    "urllib3",
    "botocore",
    "s3fs",
    "fsspec",
    "filelock",
    "matplotlib",
    "PIL",
)
OWN = ("pipelines", "tuning", "ssl_models")
MAX_BUFFERED = 20_000  # log records kept before the run directory is known

_state = {"verbose": False}


class RunLog(logging.Handler):
    """Buffers records until :meth:`attach` names the file, then writes them there."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.buffer: list[logging.LogRecord] = []
        self.stream: TextIO | None = None
        self.path = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            if len(self.buffer) < MAX_BUFFERED:
                self.buffer.append(record)
            return
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)

    def attach(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if self.stream is not None:
            self.stream.close()
        self.stream = open(path, "a")  # noqa: SIM115  (open for the process's life)
        self.path = path
        for record in self.buffer:
            self.emit(record)
        self.buffer.clear()


_run_log = RunLog()


def configure(verbose: bool = False) -> None:
    """Route third-party logging to the run log (or, with ``verbose``, leave it on the console);
    this package's own warnings print as one plain ``sslpipe:`` line each."""
    _state["verbose"] = verbose
    if not verbose:  # MLflow then leaves its loggers to us instead of printing INFO lines
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    logging.captureWarnings(True)
    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(logging.Formatter("sslpipe: %(message)s"))
    own.setLevel(logging.WARNING)
    for name in OWN:
        logger = logging.getLogger(name)
        logger.handlers = [own, _run_log]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if verbose:
        return
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.handlers = [_run_log]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # their children configured with handlers of their own (Ray Data's, Ray Train's) report
    # through the parent, so to the run log too
    for name, logger in list(logging.root.manager.loggerDict.items()):
        family = name.split(".")[0] in THIRD_PARTY and name not in THIRD_PARTY
        if family and isinstance(logger, logging.Logger):
            logger.handlers = []
            logger.propagate = True


@contextlib.contextmanager
def captured(what: str) -> Iterator[None]:
    """Unless verbose: what this process (and any process it starts meanwhile, such as Ray's)
    writes to stdout/stderr at the file-descriptor level goes to the run log instead."""
    if verbose():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    attached = _run_log.stream is not None
    sink = _run_log.stream if attached else tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    sink.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        if not attached:
            sink.seek(0)
            for line in sink.read().splitlines():
                if line.strip():
                    logging.getLogger("pipelines.console").info("%s: %s", what, line)
            sink.close()


def requiet() -> None:
    """Apply :func:`configure` again: importing Ray (or MLflow) installs its own handlers."""
    configure(verbose())


def verbose() -> bool:
    return _state["verbose"]


def attach_log(path: str) -> str:
    """Start writing the run log to ``path`` (buffered records first); say where, once."""
    _run_log.attach(path)
    if not verbose():
        phase(f"log: {path}")
    return path


def log_path() -> str:
    return _run_log.path


def phase(text: str) -> None:
    """One line announcing what the command does next."""
    print(f"sslpipe: {text}", flush=True)


def is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


LOG_INTERVAL_S = 30.0  # off a terminal: a progress line at most this often, and one at the end


class _Lines:
    """The stream tqdm writes to off a terminal (a log file, a Ray job's output): each redraw
    becomes one plain line, without the carriage returns that would pile up in a log."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    label: str,
    total: int,
    unit: str,
    stream: TextIO | None = None,
    initial: int = 0,
    interval: float = LOG_INTERVAL_S,
) -> tqdm:
    """``label: 50%|#####     | 5/10 [00:02<00:02, 2.5units/s, ...]``: redrawn in place on a
    terminal, a plain line every ``interval`` seconds (and at the end) otherwise."""
    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(total=total, initial=initial, desc=label, unit=unit, file=stream)
    return tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit=unit,
        file=_Lines(stream),
        mininterval=interval,
        ascii=True,
    )


class TrainingBar:
    """Training progress over the whole run: epoch, step/total, loss, images/s, data wait,
    elapsed and ETA (tqdm's). ``update`` on logging steps; ``epoch_done`` leaves one line per
    epoch above the bar."""

    def __init__(
        self,
        total_steps: int,
        epochs: int,
        start_step: int = 0,
        stream: TextIO | None = None,
        interval: float = LOG_INTERVAL_S,
    ) -> None:
        self.stream = stream or sys.stdout
        self.total, self.epochs = total_steps, epochs
        self.bar = progress_bar("training", total_steps, "step", self.stream, start_step, interval)
        self.step = start_step

    def started(self) -> None:
        """The first step is done: rate and ETA count from now, not from before the start-up
        (tens of seconds of Ray, workers and the first batch would read as seconds per step)."""
        self.bar.unpause()

    def update(
        self, step: int, epoch: int, loss: float, images_per_sec: float, wait: float
    ) -> None:
        self.bar.set_description_str(f"epoch {epoch}/{self.epochs}", refresh=False)
        self.bar.set_postfix_str(
            f"loss {loss:.4f}, {images_per_sec:.0f} images/s, data wait {wait:.0%}", refresh=False
        )
        self.bar.update(step - self.step)
        self.step = step

    def epoch_done(
        self,
        epoch: int,
        step: int,
        loss: float,
        images_per_sec: float,
        wait: float,
        knn: float | None = None,
    ) -> None:
        self.bar.update(step - self.step)
        self.step = step
        line = (
            f"sslpipe: epoch {epoch}/{self.epochs}  step {step}/{self.total}  loss {loss:.4f}  "
            f"{images_per_sec:.0f} images/s  data wait {wait:.0%}"
        )
        self.bar.write(line + (f"  kNN {knn:.3f}" if knn is not None else ""), file=self.stream)

    def close(self) -> None:
        self.bar.close()
