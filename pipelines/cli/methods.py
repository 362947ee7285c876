"""``sslpipe methods``: the methods the registry knows, with their family and paper."""

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the methods the registry knows")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ssl_models.registry import METHODS

    width = max(len(k) for k in METHODS)
    for key, entry in METHODS.items():
        print(f"{key:<{width}}  {entry.family:<24}  {entry.paper}")
    return 0
