"""`python -m rq_jax.convert <subcommand> ...`: dispatches to the converter modules listed in SUBCOMMANDS.

Each module provides `HELP`, `add_arguments(parser)` and `run(args)`. Expected failures (a missing or wrong
file, a checkpoint that does not fit, a missing optional dependency) end the command with one line
`error: ...` on stderr and exit status 1; `--debug` (or RQ_JAX_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os

SUBCOMMANDS = {
    "lpips": "rq_jax.convert.lpips",
    "inception": "rq_jax.convert.inception",
    "official": "rq_jax.convert.official",
}
USER_ERRORS = (OSError, ValueError, KeyError, ImportError)


def error_line(e: BaseException) -> str:
    """The one-line `error: ...` message of an expected failure (a KeyError's message is its argument)."""
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return "error: " + " ".join(message.split())


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The command line with one subparser per converter, and the converter modules by name."""
    parser = argparse.ArgumentParser(prog="python -m rq_jax.convert", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or set RQ_JAX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {name: importlib.import_module(path) for name, path in SUBCOMMANDS.items()}
    for name, module in modules.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.__doc__, parents=[common],
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser, modules


def main(argv: list[str] | None = None) -> None:
    """Parses the subcommand and its flags, then runs it; an expected failure exits with `error: ...`."""
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        modules[args.command].run(args)
    except USER_ERRORS as e:
        if args.debug or os.environ.get("RQ_JAX_DEBUG", "") not in ("", "0"):
            raise
        raise SystemExit(error_line(e)) from e


if __name__ == "__main__":
    main()
