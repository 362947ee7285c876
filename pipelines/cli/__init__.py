"""``sslpipe``: one module per command, each with ``add_parser(sub)`` setting ``run``.

Commands of packages built on this one (``sslpipe tune``, ``sslpipe survey`` from ``tuning``)
come in through the ``sslpipe.commands`` entry points their distribution declares, so this
package never imports them. Parsers import nothing heavy: ``sslpipe --help`` stays fast.
"""

import argparse
import atexit
import os
import sys
import threading
from importlib.metadata import entry_points, version
from typing import NoReturn

from pipelines.cli import embed, eval, methods, pretrain, register, shard

BUILT_IN = (pretrain, shard, eval, embed, register, methods)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe", description="Self-supervised pretraining of image encoders on Ray."
    )
    parser.add_argument("--version", action="version", version=f"sslpipe {version('sslpipe')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in BUILT_IN:
        module.add_parser(sub)
    for plugin in entry_points(group="sslpipe.commands"):
        plugin.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.cluster.checks import ClusterError
    from pipelines.config.typed import ConfigError
    from pipelines.tracking import console

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as typed: a Ray job (--address http://...) reruns it
    console.configure(verbose=getattr(args, "verbose", False))
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"sslpipe: {e}", file=sys.stderr)
        return 2
    except ClusterError as e:
        print(f"sslpipe: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sslpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("SSLPIPE_TRACEBACK") == "1":
            raise
        print(f"sslpipe {args.command}: {describe(e)}", file=sys.stderr)
        print("  (SSLPIPE_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


def entry() -> NoReturn:
    """``sslpipe`` and ``python -m pipelines.cli``: :func:`main`, then :func:`leave`."""
    leave(main())


def leave(code: int) -> NoReturn:
    """End the process as the interpreter does, without its teardown: stop and join the
    threads it would wait for, run the exit hooks (Ray's shutdown, MLflow's, temporary
    directories' removal, logging's flush), flush stdout and stderr, then ``os._exit``. The
    teardown only frees modules and objects one by one: ~2.5 s after a run that imported
    torch, Ray and MLflow (BENCHMARKS.md). Where this Python lacks the two hooks it calls
    (CPython's own, used at its exit), the process exits normally."""
    shutdown_threads = getattr(threading, "_shutdown", None)
    run_exit_hooks = getattr(atexit, "_run_exitfuncs", None)
    if shutdown_threads is None or run_exit_hooks is None:
        sys.exit(code)
    shutdown_threads()  # executors' workers told to stop, then non-daemon threads joined
    run_exit_hooks()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def describe(e: BaseException) -> str:
    """One line for an error: its message, with the type where the message alone is unclear."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    text = str(e.args[0]) if isinstance(e, LookupError) and e.args else str(e)
    plain = isinstance(e, (LookupError, FileNotFoundError, ValueError, RuntimeError))
    return text if plain and text else f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    entry()
