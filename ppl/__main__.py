"""Command line: ``python -m ppl demo [--quick]``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train hand-written ELBO / IWAE objectives under several gradient strategies",
    )
    demo.add_argument(
        "--quick", action="store_true", help="small mode (ELBO only, fewer steps), as in tests"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_module

        demo_module.main(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
