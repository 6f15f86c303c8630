"""The ``loopline`` command: one sub-command per stage, each registered by its own module.

A stage module that offers a command defines ``register_cli(subparsers)``; it adds its parser and
sets ``handler`` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from loopline.config import ConfigError, settings

# Modules whose register_cli adds sub-commands, in the order `loopline --help` lists them.
COMMAND_MODULES = (
    "loopline.simulate",
    "loopline.ingest",
    "loopline.importers",
    "loopline.transform",
    "loopline.features",
    "loopline.serving.scoring",  # score-batch
    "loopline.serving.packaging",  # bento package / validate
)


def _config_show(args: argparse.Namespace) -> int:
    shown = settings().masked()
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        width = max(map(len, shown))
        for name, value in shown.items():
            print(f"{name:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopline", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config_parser = subparsers.add_parser("config", help="show the effective settings")
    config_sub = config_parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print every setting (secrets masked)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(handler=_config_show)

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # stage not built yet
                continue
            raise
        module.register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings()  # fail at start-up on a bad setting, before any work
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"loopline: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
