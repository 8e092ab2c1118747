"""The ``condex`` command line: one subcommand per stage of the pipeline.

Each subcommand lives beside the code it drives and exposes ``add_cli(subparsers)``; this module only
collects them, so adding a command is adding one function where the feature lives and one line in
``COMMANDS``. Only the module of the command being run is imported: those modules import torch, which
takes seconds, and ``condex --help`` / ``condex --version`` need none of it."""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.errors import CondexError

# command -> (module that adds it, one-line help for the top-level listing), in the order --help lists them.
COMMANDS = {
    "teacher": ("server.teacher", "train, evaluate or import the server's teacher model"),
    "condense": ("client.condense.cli", "condense a site's images into a few (optionally DP) samples per class"),
    "audit": ("client.audit_cli", "measure what a payload (and a student) reveals about the site's images"),
    "distill": ("server.cli", "guided model inversion + KD of a student from a teacher"),
    "export": ("server.cli", "export a student checkpoint to safetensors, TorchScript, ONNX"),
}
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))
DESCRIPTION = (
    "condex: compress models without moving data. Data sites condense their images into a few synthetic "
    "samples per class; a server uses them to guide model inversion of its teacher and distils a small "
    "student. Run `condex COMMAND --help` for each command."
)


def version() -> str:
    """The installed distribution's version (the source tree's when run from a checkout without install)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("condex")
    except PackageNotFoundError:
        return "unknown (not installed; run `pip install -e .`)"


def _base_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="condex", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"condex {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, subparsers


def build_parser(modules: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The full parser, importing every command module (or only ``modules``)."""
    parser, subparsers = _base_parser()
    for name in modules or COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def _listing_parser() -> argparse.ArgumentParser:
    """Top-level help, ``--version`` and usage errors: the commands by name, without importing them."""
    parser, subparsers = _base_parser()
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _chosen_module(argv: list[str]) -> str | None:
    """The module of the command named first in ``argv`` (None for ``--help``, ``--version`` or a typo)."""
    for arg in argv:
        if not arg.startswith("-"):
            entry = COMMANDS.get(arg)
            return entry[0] if entry and entry[0] in COMMAND_MODULES else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    module = _chosen_module(argv)
    parser = build_parser((module,)) if module else _listing_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CondexError as exc:
        print(f"condex {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
