"""The ``mosaic-jax`` command line: one subcommand per module in ``mosaic_jax.commands``.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed args and returning an exit status). Modules are
imported only when listed, so ``mosaic-jax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "info",
    "convert",
    "check_parity",
    "make_demo_data",
    "stats",
    "train",
    "forecast",
    "evaluate",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaic-jax", description="Mosaic weather model in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mosaic_jax.commands.{name}")
        except ModuleNotFoundError as e:  # a command not built yet
            if e.name == f"mosaic_jax.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # User-facing errors: a clear message, no traceback.
        print(f"mosaic-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
