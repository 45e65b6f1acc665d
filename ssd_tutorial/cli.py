"""The ``ssd-tutorial`` command line. Run ``ssd-tutorial --help`` for the commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ssd_tutorial import anchors


def _anchors_command(args: argparse.Namespace) -> int:
    config = anchors.CONFIGS[args.config]
    rows = anchors.anchor_table(config)
    headers = list(rows[0])
    cells = [[_format(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print(
        f"{config.name}: {config.image_size}x{config.image_size} input, "
        f"{config.num_boxes} default boxes"
    )
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    return 0


def _format(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="ssd-tutorial", description="Train, evaluate and run SSD detectors."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("anchors", help="print the default-box table of a config")
    p.add_argument(
        "--config",
        choices=sorted(anchors.CONFIGS),
        default="SSD300",
        help="named default-box configuration (default: SSD300)",
    )
    p.set_defaults(run=_anchors_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssd-tutorial`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
