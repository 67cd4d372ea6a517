"""The ``tissuestack`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tissuestack._version import __version__
from tissuestack.errors import FormatError, StoreError, ValidationError

if TYPE_CHECKING:
    from tissuestack.io._technology import Option, Technology

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
        help="build the synthetic demo dataset and show what it holds; with OUTDIR, run the paper's workflow",
        description=(
            "Build the built-in synthetic dataset (every element kind) and print its tree. With OUTDIR: run the "
            "SpatialData paper's workflow on synthetic data (two Xenium-like replicates and a Visium-like slide "
            "of one tissue: image registration, label transfer, aggregation at the spots, correlations) and "
            "write OUTDIR/paper.zarr and PNG figures."
        ),
    )
    demo.add_argument(
        "outdir",
        nargs="?",
        default=None,
        metavar="OUTDIR",
        help="run the paper's workflow and write its store and figures here",
    )
    demo.add_argument(
        "--cells", type=_positive_int, default=None, help="number of cells (default 2000; 5000 with OUTDIR)"
    )
    demo.add_argument(
        "--transcripts", type=_positive_int, default=100_000, help="number of transcripts (default 100000)"
    )
    demo.add_argument(
        "--genes", type=_positive_int, default=None, help="number of genes (default 50; 30 with OUTDIR)"
    )
    demo.add_argument(
        "--image-size", type=_positive_int, default=1024, help="image side in pixels (default 1024)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser(
        "info",
        help="show what a store holds (tree, sizes, format versions, coordinate systems)",
        description="Show the elements of a SpatialData Zarr store (local path or URL) without loading data. "
        "With --json, print one JSON document instead: for every element its kind, shape or row count, dtypes, "
        "columns, checksums of its data and its transformations as affine matrices, plus the coordinate "
        "systems (reads the data to checksum it). Two stores, or one store read by two tools, can be compared "
        "by diffing these documents.",
    )
    info.add_argument("store", help="store path or URL")
    info.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary of every element (shapes, dtypes, checksums, transformations) for diffing",
    )
    _storage_option_arg(info)
    info.set_defaults(func=_cmd_info)

    validate = sub.add_parser(
        "validate",
        help="check a store and list every problem (exit status 1 if any)",
        description="Check every element of a store and list every problem in one run, each with the element, "
        "the file and what to do: metadata files that do not parse, chunk files missing from rasters (from a "
        "listing, no data read), unreadable Parquet files, elements that fail their model, table links to "
        "missing elements or to ids the element does not have, the labels list, consolidated metadata, and "
        "hidden temporaries left by interrupted writes. Exits 1 if there is any problem (notes, such as chunks "
        "another writer skipped because they held only the fill value, do not count), 2 if the store cannot "
        "be opened at all.",
    )
    validate.add_argument("store", help="store path or URL")
    validate.add_argument(
        "--deep",
        action="store_true",
        help="also decode every raster chunk and Parquet row group, and compare table ids with labels values",
    )
    _storage_option_arg(validate)
    validate.set_defaults(func=_cmd_validate)

    convert = sub.add_parser(
        "convert-format",
        help="rewrite a store in another Zarr format (2 or 3)",
        description="Read a store and write it again with the given Zarr format: 3 = container 0.2 (SpatialData "
        ">= 0.6), 2 = container 0.1 (SpatialData >= 0.4).",
    )
    convert.add_argument("input", help="input store path or URL")
    convert.add_argument("output", help="output store path or URL")
    convert.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    convert.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    _storage_option_arg(convert)
    convert.set_defaults(func=_cmd_convert)

    tech = sub.add_parser(
        "convert",
        help="convert vendor output or a file (image, shapes, points) into a store, streaming",
        description="Read a vendor output folder (xenium, visium, ...) or a generic file (image, shapes, points) "
        "and write it to a SpatialData Zarr store element by element (one element in memory at a time). "
        "Usage: tissuestack convert TECHNOLOGY INPUT OUTPUT.zarr [--overwrite] [--zarr-format 2|3] "
        "[--option VALUE ...]. See 'tissuestack convert --list' for the technologies and their options, and "
        "'tissuestack convert TECHNOLOGY --help' for one of them.",
    )
    tech.add_argument("--list", action="store_true", help="list the technologies and their options")
    tech.add_argument("technology", nargs="?", help="technology name (see --list)")
    tech.add_argument("arguments", nargs=argparse.REMAINDER, help="INPUT OUTPUT.zarr and options")
    tech.set_defaults(func=_cmd_convert_technology)
    _selections_parser(sub)
    return parser


def _selections_parser(sub: Any) -> None:
    selections = sub.add_parser(
        "selections",
        help="import / export Xenium Explorer selections (CSV or GeoJSON, µm) into / from a store",
        description="Xenium Explorer selections: 'import' adds a CSV / GeoJSON export to a store as a shapes "
        "element placed like the cells (µm in 'global', morphology pixels in 'pixels'); 'export' writes a shapes "
        "element of a store as a selection file in µm.",
    )
    actions = selections.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="add a selection file to a store as a shapes element")
    imp.add_argument("store", help="store path")
    imp.add_argument("file", help="Xenium Explorer selection export (.csv or .geojson)")
    imp.add_argument("--name", default="selections", help="element name (default selections)")
    imp.add_argument("--name-column", default=None, help="CSV column / GeoJSON property with the names")
    imp.add_argument(
        "--like",
        default=None,
        help="element (in µm) whose transformations the selections take (default: cells)",
    )
    imp.add_argument(
        "--pixel-size", type=float, default=None, help="µm per morphology pixel (default 0.2125)"
    )
    imp.add_argument("--overwrite", action="store_true", help="replace an element of that name")
    imp.set_defaults(func=_cmd_selections_import)
    exp = actions.add_parser("export", help="write a shapes element of a store as a selection file")
    exp.add_argument("store", help="store path or URL")
    exp.add_argument("element", help="shapes element name")
    exp.add_argument("file", help="output .csv or .geojson")
    exp.add_argument("--format", choices=("csv", "geojson"), default=None, help="default from the suffix")
    exp.add_argument(
        "--coordinate-system", default="global", help="the µm coordinate system (default global)"
    )
    exp.add_argument(
        "--name-column", default=None, help="column with the selection names (default the index)"
    )
    exp.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    exp.set_defaults(func=_cmd_selections_export)

    plot = sub.add_parser(
        "plot",
        help="draw elements of a store into an image file (png, pdf, svg)",
        description="Draw elements of a store in one coordinate system and save the figure (format from the "
        "suffix of OUT). Images first, then labels, shapes and points, each coloured by --color where the key "
        "exists for it (an element column, or an obs column or gene of an annotating table). Only what lies "
        "inside --crop is read; rasters are read at the pyramid level that fits --width.",
    )
    plot.add_argument("store", help="store path or URL")
    plot.add_argument("out", help="image file to write (.png, .pdf, .svg)")
    plot.add_argument(
        "--element",
        action="append",
        default=None,
        metavar="NAME",
        help="element to draw (repeatable; default all)",
    )
    plot.add_argument("--color", default=None, help="colour key (column, obs column, gene) or a colour")
    plot.add_argument(
        "--coordinate-system", default=None, metavar="CS", help="coordinate system (default the first one)"
    )
    plot.add_argument(
        "--crop",
        type=float,
        nargs=4,
        default=None,
        metavar=("XMIN", "XMAX", "YMIN", "YMAX"),
        help="draw only this box of the coordinate system",
    )
    plot.add_argument("--width", type=_positive_int, default=None, metavar="PX", help="panel width in pixels")
    plot.add_argument("--dpi", type=_positive_int, default=100, help="dots per inch (default 100)")
    _storage_option_arg(plot)
    plot.set_defaults(func=_cmd_plot)

    viewer = sub.add_parser(
        "view",
        help="explore and annotate a store in the browser",
        description="Serve the interactive viewer for a store and print its URL: every element in any "
        "coordinate system, coloured by any table value; draw polygons, rectangles, circles and landmarks and "
        "save them into the store. Bound to 127.0.0.1 by default (reach it from elsewhere through an SSH port "
        "forward); bound to any other address it requires the random token in the printed URL. Remote stores "
        "are never written.",
    )
    viewer.add_argument("store", help="store path or URL")
    viewer.add_argument("--port", type=int, default=5006, help="port (default 5006; 0 picks a free one)")
    viewer.add_argument("--host", default="127.0.0.1", metavar="ADDR", help="address to bind (default 127.0.0.1)")
    viewer.add_argument("--no-browser", action="store_true", help="do not open a browser")
    viewer.add_argument("--read-only", action="store_true", help="disable saving annotations")
    viewer.add_argument("--token", default=None, help=argparse.SUPPRESS)  # tests: a known token
    _storage_option_arg(viewer)
    viewer.set_defaults(func=_cmd_view)


def _storage_option_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for remote stores (repeatable), e.g. -o anon=true -o endpoint_url=http://...",
    )


def _storage_options(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"tissuestack: --storage-option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        if key == "endpoint_url":
            out.setdefault("client_kwargs", {})["endpoint_url"] = out.pop(key)
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    from tissuestack._container.inspect import print_info  # heavy imports only for this command

    return print_info(args.store, as_json=args.json, storage_options=_storage_options(args.storage_option))


def _cmd_validate(args: argparse.Namespace) -> int:
    from tissuestack._container.inspect import validate_store  # heavy imports only for this command

    found = validate_store(args.store, deep=args.deep, storage_options=_storage_options(args.storage_option))
    problems = [p for p in found if not p.note]
    notes = [p for p in found if p.note]
    for note in notes:
        print(f"note: {note}")
    if not problems:
        print(f"{args.store}: OK" + (f" ({len(notes)} note(s))" if notes else ""))
        return 0
    print(f"{args.store}: {len(problems)} problem(s)")
    for problem in problems:
        print(f"- {problem}")
    return 1


def _cmd_convert(args: argparse.Namespace) -> int:
    from tissuestack import read_zarr  # heavy imports only for this command

    options = _storage_options(args.storage_option)
    sdata = read_zarr(args.input, storage_options=options)
    sdata.write(args.output, zarr_format=args.zarr_format, overwrite=args.overwrite, storage_options=options)
    print(f"wrote {args.output} (Zarr v{args.zarr_format})")
    return 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _tuple_value(text: str) -> tuple:
    """A comma-separated CLI value: a tuple of ints, of floats, or of strings."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    for cast in (int, float):
        try:
            return tuple(cast(item) for item in items)
        except ValueError:
            continue
    return items


def _option_type(option: Option) -> Callable[[str], Any] | None:
    return {bool: None, int: int, float: float, str: str, tuple: _tuple_value}.get(option.type, str)


def _technology_parser(technology: Technology) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"tissuestack convert {technology.name}",
        description=f"{technology.summary}. Written to a SpatialData Zarr store element by element.",
    )
    parser.add_argument("input", help="input folder or file")
    parser.add_argument("output", help="output store path or URL (e.g. out.zarr)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it exists (after success)"
    )
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="Zarr format (default 3)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    _storage_option_arg(parser)
    group = parser.add_argument_group(f"{technology.name} options")
    for option in technology.options:
        shown = _option_help(option)
        if option.type is bool:
            group.add_argument(
                _flag(option.name),
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=shown,
            )
        else:
            group.add_argument(
                _flag(option.name),
                dest=option.name,
                type=_option_type(option),
                choices=option.choices,
                default=argparse.SUPPRESS,
                metavar=None if option.choices else _metavar(option),
                help=shown,
            )
    return parser


def _metavar(option: Option) -> str:
    return "A,B,..." if option.type is tuple else option.type.__name__.upper()


def _option_help(option: Option) -> str:
    if "(default" in option.help:  # the help already says what the default means
        return option.help
    return f"{option.help} (default: {_shown_default(option)})"


def _shown_default(option: Option) -> str:
    if option.default is None:
        return "none"
    if isinstance(option.default, tuple):
        return ",".join(str(v) for v in option.default) or "none"
    return str(option.default)


def _print_technologies() -> int:
    from tissuestack.io._technology import _MODULES, get_technology

    for name in _MODULES:
        try:
            technology = get_technology(name)
        except ImportError as err:
            print(f"{name}\n    (not available: {err})")
            continue
        print(f"{technology.name}\n    {technology.summary}")
        for option in technology.options:
            flag = _flag(option.name)
            if option.type is bool:
                flag = f"{flag} / --no-{option.name.replace('_', '-')}"
            elif option.choices:
                flag = f"{flag} {{{','.join(map(str, option.choices))}}}"
            else:
                flag = f"{flag} {_metavar(option)}"
            print(f"    {flag}: {_option_help(option)}")
    return 0


def _cmd_convert_technology(args: argparse.Namespace) -> int:
    if args.list:
        return _print_technologies()
    if args.technology is None:
        raise SystemExit(
            "tissuestack convert: give a technology, INPUT and OUTPUT (see tissuestack convert --list)"
        )
    from tissuestack.io._convert import convert  # heavy imports only for this command
    from tissuestack.io._technology import get_technology

    technology = get_technology(args.technology)
    parsed = vars(_technology_parser(technology).parse_args(args.arguments))
    fixed = {
        k: parsed.pop(k)
        for k in ("input", "output", "overwrite", "zarr_format", "progress", "storage_option")
    }
    start = time.perf_counter()
    path = convert(
        technology,
        fixed["input"],
        fixed["output"],
        overwrite=fixed["overwrite"],
        zarr_format=fixed["zarr_format"],
        progress=fixed["progress"],
        storage_options=_storage_options(fixed["storage_option"]) or None,
        **parsed,
    )
    print(
        f"wrote {path} (Zarr v{fixed['zarr_format']}, {technology.name}) in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _cmd_selections_import(args: argparse.Namespace) -> int:
    from tissuestack import read_zarr  # heavy imports only for this command
    from tissuestack.io._xenium_explorer import add_xenium_explorer_selection

    sdata = read_zarr(args.store)
    options: dict[str, Any] = {"name_column": args.name_column}
    if args.pixel_size is not None:
        options["pixel_size"] = args.pixel_size
    shapes = add_xenium_explorer_selection(
        sdata, args.file, args.name, like=args.like, overwrite=args.overwrite, **options
    )
    sdata.write_element(args.name, overwrite=args.overwrite)
    print(f"added {len(shapes)} selection(s) to {args.store} as shapes {args.name!r}")
    return 0


def _cmd_selections_export(args: argparse.Namespace) -> int:
    from tissuestack import read_zarr  # heavy imports only for this command
    from tissuestack.io._xenium_explorer import write_xenium_explorer_selection

    sdata = read_zarr(args.store)
    path = write_xenium_explorer_selection(
        args.element,
        args.file,
        sdata=sdata,
        format=args.format,
        coordinate_system=args.coordinate_system,
        name_column=args.name_column,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(sdata[args.element])} selection(s) of {args.element!r} to {path}")
    return 0


def _color_applies(sdata: Any, name: str, key: str | None) -> bool:
    """Whether colour key ``key`` can colour element ``name`` (a colour, an element column or a table key)."""
    if key is None:
        return False
    from tissuestack.elements import get_kind_protocol

    if key in get_kind_protocol(sdata.kind_of(name)).columns(sdata[name]):  # a column of shapes or points
        return True
    for table_name in sdata.get_annotating_tables(name):
        table = sdata.tables[table_name]
        if key in table.obs.columns or key in table.var_names:
            return True
    from matplotlib.colors import is_color_like

    return bool(is_color_like(key))


def _cmd_view(args: argparse.Namespace) -> int:
    try:
        import bokeh  # noqa: F401  (the viewer needs the optional "viewer" extra)
    except ImportError:
        raise ValidationError('the viewer needs bokeh: pip install "tissuestack[viewer]"') from None
    from tissuestack import read_zarr
    from tissuestack.viewer._server import make_server

    sdata = read_zarr(args.store, storage_options=_storage_options(args.storage_option))
    if not sdata.coordinate_systems:
        raise ValidationError(f"{args.store}: no spatial element to show")
    if os.environ.get("TISSUESTACK_VIEWER_LOG"):  # render timings on stderr (benchmarks/bench_viewer.py)
        import logging

        logging.basicConfig(stream=sys.stderr, format="%(name)s: %(message)s")
        logging.getLogger("tissuestack.viewer").setLevel(logging.DEBUG)
    print(f"reading what the first view of {args.store} needs ...", flush=True)
    started = time.perf_counter()
    server, url = make_server(
        sdata, host=args.host, port=args.port, read_only=args.read_only, token=args.token, warm="now"
    )
    print(f"ready in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"tissuestack viewer for {args.store} at {url}", flush=True)
    print("press Ctrl+C to stop", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    return 0


# how elements not coloured by --color are drawn: shapes as outlines only, so that they do not hide what lies
# below; points in light grey
_UNCOLOURED_STYLE: dict[str, dict[str, Any]] = {
    "shapes": {"fill_alpha": 0.0, "outline_alpha": 1.0, "outline_color": "#ffffff", "outline_width": 0.6},
    "points": {"color": "#bbbbbb"},
}


def _cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib  # the plotting command needs the optional "plot" extra

    matplotlib.use("Agg")
    from tissuestack import read_zarr
    from tissuestack.elements import get_kind_protocol

    sdata = read_zarr(args.store, storage_options=_storage_options(args.storage_option))
    cs = args.coordinate_system
    if cs is None:
        if not sdata.coordinate_systems:
            raise ValidationError(f"{args.store}: no spatial element to draw")
        cs = "global" if "global" in sdata.coordinate_systems else sdata.coordinate_systems[0]
    names = args.element or sdata.elements_in_coordinate_system(cs)
    chain = sdata.pl
    by_kind: dict[str, list[str]] = {"images": [], "labels": [], "shapes": [], "points": []}
    for name in names:
        kind = sdata.kind_of(name)
        if not get_kind_protocol(kind).is_spatial:
            raise ValidationError(f"{name!r} is a table; --element names images, labels, shapes or points")
        by_kind[kind].append(name)
    for name in by_kind["images"]:
        chain = chain.render_images(name)
    for kind in ("labels", "shapes", "points"):
        for name in by_kind[kind]:
            color = args.color if _color_applies(sdata, name, args.color) else None
            render = getattr(chain, f"render_{kind}")
            if color is None and kind in _UNCOLOURED_STYLE:
                chain = render(name, **_UNCOLOURED_STYLE[kind])
            else:
                chain = render(name, color)
    start = time.perf_counter()
    chain.show(coordinate_systems=cs, save=args.out, crop=args.crop, width=args.width, dpi=args.dpi)
    print(f"wrote {args.out} ({len(names)} elements in {cs!r}, {time.perf_counter() - start:.2f} s)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.outdir is not None:
        from tissuestack.demo import run_paper_workflow  # heavy: imported only by the commands that need it

        start = time.perf_counter()
        run_paper_workflow(
            args.outdir,
            n_cells=5_000 if args.cells is None else args.cells,
            n_genes=30 if args.genes is None else args.genes,
            seed=args.seed,
            progress=True,
        )
        print(f"paper workflow done in {time.perf_counter() - start:.1f} s")
        return 0
    from tissuestack import datasets  # heavy: imported only by the commands that need it

    start = time.perf_counter()
    sdata = datasets.synthetic(
        n_cells=2_000 if args.cells is None else args.cells,
        n_transcripts=args.transcripts,
        n_genes=50 if args.genes is None else args.genes,
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
    try:
        return int(args.func(args))
    except (StoreError, FormatError, ValidationError, KeyError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"tissuestack: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
