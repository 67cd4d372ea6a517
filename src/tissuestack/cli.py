"""The ``tissuestack`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from tissuestack._version import __version__

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tissuestack",
        description="Multimodal spatial omics data in shared coordinate systems.",
    )
    parser.add_argument("--version", action="version", version=f"tissuestack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="build the synthetic demo dataset and show what it holds",
        description="Build the built-in synthetic dataset (every element kind) and print its tree.",
    )
    demo.add_argument("--cells", type=_positive_int, default=2_000, help="number of cells (default 2000)")
    demo.add_argument(
        "--transcripts", type=_positive_int, default=100_000, help="number of transcripts (default 100000)"
    )
    demo.add_argument("--genes", type=_positive_int, default=50, help="number of genes (default 50)")
    demo.add_argument(
        "--image-size", type=_positive_int, default=1024, help="image side in pixels (default 1024)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from tissuestack import datasets  # heavy: imported only by the commands that need it

    start = time.perf_counter()
    sdata = datasets.synthetic(
        n_cells=args.cells,
        n_transcripts=args.transcripts,
        n_genes=args.genes,
        image_size=args.image_size,
        seed=args.seed,
    )
    built = time.perf_counter() - start
    print(sdata)
    print()
    # a small tour: a transformation found through the graph of coordinate systems
    between = sdata.get_transformation_between("cell_labels", "transcripts")
    matrix = between.to_affine_matrix(("x", "y"), ("x", "y"))
    print("labels pixel -> transcript micron coordinates (through the 'global' coordinate system):")
    for row in matrix:
        print("   [" + ", ".join(f"{v:9.4f}" for v in row) + "]")
    table = sdata["table"]
    print(
        f"table 'table' annotates {sdata.get_annotated_elements('table')}: "
        f"{table.n_obs} cells x {table.n_vars} genes, {int(table.X.sum()):,} transcripts assigned to cells"
    )
    print(f"built in {built:.2f} s (rasters are lazy: no pixel was computed)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
