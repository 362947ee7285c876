"""``sslpipe``: one module per command, each with ``add_parser(sub)`` setting ``run``.

Commands of packages built on this one (``sslpipe tune``, ``sslpipe survey`` from ``tuning``)
come in through the ``sslpipe.commands`` entry points their distribution declares, so this
package never imports them. Parsers import nothing heavy: ``sslpipe --help`` stays fast.
"""

import argparse
import os
import sys
from importlib.metadata import entry_points, version

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


def describe(e: BaseException) -> str:
    """One line for an error: its message, with the type where the message alone is unclear."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    text = str(e.args[0]) if isinstance(e, LookupError) and e.args else str(e)
    plain = isinstance(e, (LookupError, FileNotFoundError, ValueError, RuntimeError))
    return text if plain and text else f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
