"""`ainode` command line: one module per command group, each exposing ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module registers its sub-commands. Imported lazily inside the command functions so
# that `ainode status` does not pay for torch or highdicom.
_COMMAND_MODULES = [
    "node.cli.serve_cmd",
    "node.cli.dicom_cmd",
    "node.cli.status_cmd",
    "node.cli.route_cmd",
    "node.cli.delivery_cmd",
    "node.cli.demo_cmd",
    "node.cli.process_cmd",
    "node.cli.ai_cmd",
    "node.cli.secret_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ainode",
        description="PACS AI node: lung-nodule AI beside a PACS. Results are NOT FOR DIAGNOSTIC USE.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from node.errors import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        # A bad config stops every command the same way: the field and the reason, exit 2, no traceback.
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
