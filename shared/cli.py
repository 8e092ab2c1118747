"""The ``condex`` command line: one subcommand per stage of the pipeline.

Each subcommand lives beside the code it drives and exposes ``add_cli(subparsers)``; this module only
collects them, so adding a command is adding one function where the feature lives."""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.errors import CondexError

# (module, what it adds) in the order --help lists them.
COMMAND_MODULES = (
    "server.teacher",       # condex teacher train|eval|import
    "client.condense.cli",  # condex condense
    "server.cli",           # condex distill, condex export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condex",
        description=(
            "condex: compress models without moving data. Data sites condense their images into a few "
            "synthetic samples per class; a server uses them to guide model inversion of its teacher and "
            "distils a small student. Run `condex COMMAND --help` for each command."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CondexError as exc:
        print(f"condex {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
