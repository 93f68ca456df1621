"""`python -m rq_jax.convert <subcommand> ...`: dispatches to the converter modules listed in SUBCOMMANDS.

Each module provides `HELP`, `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = {
    "lpips": "rq_jax.convert.lpips",
    "inception": "rq_jax.convert.inception",
    "official": "rq_jax.convert.official",
}


def main(argv: list[str] | None = None) -> None:
    """Parses the subcommand and its flags, then runs it."""
    parser = argparse.ArgumentParser(prog="python -m rq_jax.convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {name: importlib.import_module(path) for name, path in SUBCOMMANDS.items()}
    for name, module in modules.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    modules[args.command].run(args)


if __name__ == "__main__":
    main()
