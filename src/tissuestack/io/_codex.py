"""Akoya CODEX / PhenoCycler processor output: per-cell marker intensities (FCS or CSV) and stitched region images.

Layout (``docs/vendors.md`` §6.1); files are found relative to the data folder ``path`` (never the
working directory)::

    <path>/reg001_compensated.fcs   reg001_uncompensated.fcs      per-cell data per region (or *.csv twins);
                                                                  also found under processed/segm/.../fcs/
    <path>/reg001*.tif                                            a stitched (c, y, x) image per region, or
    <path>/stitched/reg001/reg001_cyc001_ch001_DAPI-1.tif ...     one single-channel TIFF per cycle/channel
                                                                  (also processed/stitched/reg001/)

FCS parameters: ``cell_id``, ``region`` (1-based), ``tile_num``, ``x``, ``y`` (cell centre, stitched-region pixels),
``z``, ``x_tile``, ``y_tile``, ``size`` (voxels), then one ``cyc<ccc>_ch<nnn>`` parameter per marker whose ``$PnS``
is the marker name. Channels are mapped through that PnN/PnS table (never by position); CSV twins have the PnN names
as header (``cyc001_ch001:CD45`` headers are split into channel and marker).

Elements, for region ``r`` (named ``reg<rrr>``, e.g. ``reg001``):

* shapes ``reg<rrr>_cells``: circles at (x, y), indexed by the integer ``cell_id``; radius ``cell_radius``, by
  default ``sqrt(size / pi)`` (the disk of the cell's pixel area), or 1 without a ``size`` column;
* images ``reg<rrr>_image`` (c, y, x), lazy over the TIFF(s), channels named after the markers, with a lazy pyramid;
* table ``table`` (after every shapes element): ``X`` = the marker intensities (float32, cells x markers; var
  index = marker names made unique, ``var["channel"]`` = PnN), ``obs`` = the other parameters (``cell_id``,
  ``region``, ``tile_num``, ``z``, ``x_tile``, ``y_tile``, ``size`` as integers), ``obsm["spatial"]`` = (x, y); it
  annotates every region's shapes through ``region_key="cells_region"`` (element names) and
  ``instance_key="cell_id"`` (integers).

Coordinates: the elements of one region share that region's pixel frame. With a single region it is the coordinate
system ``global``; with several, each region has its own coordinate system ``reg<rrr>`` (the regions are separate
pieces of tissue, not one frame). ``pixel_size_um`` turns pixels into µm (a ``Scale`` on every element).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._merscope import check_csv_tail, natural_key, pyramid_factors
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "codex", "iter_codex"]

CELLS_PATTERN = re.compile(
    r"^reg(?P<region>\d+)_(?P<kind>compensated|uncompensated)\.(?P<ext>fcs|csv)$", re.I
)
CHANNEL_PATTERN = re.compile(r"^cyc\d+_ch\d+", re.I)
STITCHED_PATTERN = re.compile(
    r"^reg(?P<region>\d+)_cyc(?P<cycle>\d+)_ch(?P<channel>\d+)_(?P<marker>.+?)\.tiff?$", re.I
)
TIFF_SUFFIXES = (".tif", ".tiff")
TABLE_NAME = "table"
REGION_KEY = "cells_region"
INSTANCE_KEY = "cell_id"
REQUIRED = ("cell_id", "x", "y")
INTEGER_COLUMNS = ("cell_id", "region", "tile_num", "z", "x_tile", "y_tile", "size")


@dataclass
class _Cells:
    """Per-cell rows of the selected files: obs columns, marker matrix, channel and marker names."""

    obs: pd.DataFrame
    values: np.ndarray
    channels: list[str]
    markers: list[str]
    files: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------


def _cell_files(path: Path, fcs: bool, compensated: bool) -> list[Path]:
    ext = "fcs" if fcs else "csv"
    kind = "compensated" if compensated else "uncompensated"
    folders = [path]
    nested = sorted(p.parent for p in path.glob(f"processed/segm/*/fcs/{kind}/*.{ext}"))
    folders += list(dict.fromkeys(nested))
    for folder in folders:
        named = [f for f in folder.iterdir() if f.is_file() and CELLS_PATTERN.match(f.name)]
        chosen = [
            f
            for f in named
            if CELLS_PATTERN.match(f.name).group("ext").lower() == ext  # type: ignore[union-attr]
            and CELLS_PATTERN.match(f.name).group("kind").lower() == kind  # type: ignore[union-attr]
        ]
        if chosen:
            return sorted(chosen, key=lambda f: natural_key(f.name))
        other = [f for f in named if f.suffix.lower() == f".{ext}"]
        if other:
            raise ReaderError(
                f"{folder}: only {', '.join(sorted(f.name for f in other))} found; expected reg<NNN>_{kind}.{ext} "
                f"(pass compensated={not compensated} to read those)"
            )
        plain = sorted(
            (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == f".{ext}"),
            key=lambda f: natural_key(f.name),
        )
        if plain:
            return plain
    other_ext = "csv" if fcs else "fcs"
    hint = (
        f" (there are .{other_ext} files: pass fcs={not fcs})"
        if any(f.suffix.lower() == f".{other_ext}" for f in path.iterdir())
        else ""
    )
    raise ReaderError(
        f"{path}: no per-cell .{ext} file; expected reg<NNN>_{kind}.{ext} (or one *.{ext}) in the folder or under "
        f"processed/segm/<run>/fcs/{kind}/{hint}"
    )


def _split_header(column: str) -> tuple[str, str]:
    """``cyc001_ch001:CD45`` -> (``cyc001_ch001``, ``CD45``); plain names are their own marker."""
    if ":" in column:
        channel, marker = column.split(":", 1)
        return channel.strip(), marker.strip() or channel.strip()
    return column, column


def _read_cell_file(file: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(frame with PnN/channel column names, channel columns, marker names) of one FCS or CSV file."""
    if file.suffix.lower() == ".fcs":
        from tissuestack.io._fcs import read_fcs

        fcs = read_fcs(file)
        if len(set(fcs.names)) != len(fcs.names):
            dup = sorted({n for n in fcs.names if fcs.names.count(n) > 1})
            raise ReaderError(
                f"{file}: FCS parameter names ($PnN) are repeated ({dup}); expected unique names"
            )
        frame = pd.DataFrame(fcs.data, columns=fcs.names)
        marker_of = {n: (m if m else n) for n, m in zip(fcs.names, fcs.markers, strict=True)}
    else:
        check_csv_tail(file, "per-cell CSV")
        try:
            frame = pd.read_csv(file)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ReaderError(
                f"{file}: cannot read the per-cell CSV (expected a header line and rows): {err}"
            ) from err
        pairs = [_split_header(str(c)) for c in frame.columns]
        frame.columns = [c for c, _ in pairs]
        marker_of = dict(pairs)
    channels = [c for c in frame.columns if CHANNEL_PATTERN.match(c)]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing or not channels:
        what = f"the column(s) {missing}" if missing else "no marker channel (cyc<ccc>_ch<nnn>)"
        raise ReaderError(
            f"{file}: {what}; expected the CODEX parameters cell_id, region, x, y, ... and one cyc<ccc>_ch<nnn> "
            f"channel per marker (the file has {list(frame.columns)[:15]})"
        )
    return frame, channels, [marker_of[c] for c in channels]


def _as_int(values: pd.Series, column: str, file: Path) -> np.ndarray:
    arr = values.to_numpy()
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    try:
        floats = arr.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ReaderError(f"{file}: column {column!r} is not numeric; expected integers") from err
    bad = ~np.isfinite(floats) | (floats != np.round(floats))
    if bad.any():
        raise ReaderError(
            f"{file}: column {column!r} holds {int(bad.sum())} non-integer value(s) (first: {floats[bad][0]}); "
            "expected integers"
        )
    return floats.astype(np.int64)


def _read_cells(files: list[Path]) -> _Cells:
    frames, values = [], []
    channels: list[str] | None = None
    markers: list[str] = []
    for file in files:
        frame, chans, marks = _read_cell_file(file)
        if channels is None:
            channels, markers = chans, marks
        elif chans != channels:
            raise ReaderError(
                f"{file}: marker channels {chans[:5]}... differ from those of {files[0].name} ({channels[:5]}...); "
                "expected every region to have the same panel"
            )
        obs = frame.drop(columns=chans)
        for column in INTEGER_COLUMNS:
            if column in obs.columns:
                obs[column] = _as_int(obs[column], column, file)
        if "region" not in obs.columns:
            match = CELLS_PATTERN.match(file.name)
            obs["region"] = np.int64(int(match.group("region")) if match else 1)
        for column in ("x", "y"):
            obs[column] = obs[column].astype(np.float64)
        keys = obs[["region", "cell_id"]]
        if keys.duplicated().any():
            dup = keys[keys.duplicated()].head(3).to_numpy().tolist()
            raise ReaderError(
                f"{file}: (region, cell_id) pairs are repeated ({dup}); expected one row per cell"
            )
        frames.append(obs)
        values.append(frame[chans].to_numpy(dtype=np.float32))
    assert channels is not None
    obs = pd.concat(frames, ignore_index=True)
    keys = obs[["region", "cell_id"]]
    if keys.duplicated().any():
        dup = keys[keys.duplicated()].head(3).to_numpy().tolist()
        raise ReaderError(
            f"{', '.join(f.name for f in files)}: cells {dup} (region, cell_id) appear in several files; expected "
            "each region in one file"
        )
    return _Cells(obs=obs, values=np.concatenate(values), channels=channels, markers=markers, files=files)


def _region_name(region: int) -> str:
    return f"reg{region:03d}"


def _stitched_channels(path: Path, region: int) -> list[tuple[tuple[int, int], str, Path]]:
    prefix = _region_name(region)
    for folder in (path / "stitched" / prefix, path / "processed" / "stitched" / prefix):
        if folder.is_dir():
            found = []
            for f in folder.iterdir():
                m = STITCHED_PATTERN.match(f.name)
                if m and int(m.group("region")) == region and f.is_file():
                    found.append(((int(m.group("cycle")), int(m.group("channel"))), m.group("marker"), f))
            if found:
                return sorted(found, key=lambda t: t[0])
    return []


def _image_source(path: Path, region: int, n_regions: int, image_file: str | None) -> Any:
    """A TIFF path, a list of per-channel TIFFs with their markers, or None."""
    if image_file is not None:
        file = Path(image_file)
        file = file if file.is_absolute() else path / file
        if not file.is_file():
            raise ReaderError(f"{file}: image_file not found (relative paths are taken from {path})")
        return file
    prefix = _region_name(region)
    top = sorted(
        (f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(TIFF_SUFFIXES)),
        key=lambda f: natural_key(f.name),
    )
    own = [f for f in top if f.name.lower().startswith(prefix)]
    if len(own) == 1:
        return own[0]
    if len(own) > 1:
        raise ReaderError(
            f"{path}: several images for region {prefix} ({[f.name for f in own]}); pass image_file= to choose one"
        )
    channels = _stitched_channels(path, region)
    if channels:
        return [(f"cyc{cyc:03d}_ch{ch:03d}", marker, f) for (cyc, ch), marker, f in channels]
    unassigned = [f for f in top if not re.match(r"^reg\d+", f.name, re.I)]
    if n_regions == 1 and len(unassigned) == 1:
        return unassigned[0]
    if n_regions == 1 and len(unassigned) > 1:
        raise ReaderError(
            f"{path}: several TIFF images ({[f.name for f in unassigned]}); pass image_file= to choose one"
        )
    return None


# ------------------------------------------------------------------------------------------------------------
# elements
# ------------------------------------------------------------------------------------------------------------


def _transformations(cs: str, pixel_size_um: float | None) -> dict[str, Any]:
    from tissuestack.transforms import Identity, Scale

    if pixel_size_um is None:
        return {cs: Identity()}
    return {cs: Scale([float(pixel_size_um)] * 2, axes=("x", "y"))}


def _image_element(source: Any, cells: _Cells, tfs: dict, name: str, *, pyramid: bool, chunks: Any) -> Any:
    """A stitched image from one TIFF, or from per-channel TIFFs named after their channel through the table's
    PnN -> marker map (the file name's marker when the channel is not in the table)."""
    import dask.array as da

    from tissuestack.elements import Image2DModel
    from tissuestack.io._tiff import open_tiff, tiff_metadata, tiff_to_element

    if isinstance(source, Path):
        meta = tiff_metadata(source)
        n_c = int(np.prod([n for ax, n in zip(meta.axes, meta.shape, strict=True) if ax not in "YX"]))
        names = meta.channel_names or (cells.markers if n_c == len(cells.markers) else None)
        height, width = meta.shape[meta.axes.index("Y")], meta.shape[meta.axes.index("X")]
        try:
            return tiff_to_element(
                source,
                kind="image",
                channel_names=names,
                transformations=tfs,
                scale_factors=pyramid_factors(height, width) if pyramid and meta.n_levels == 1 else None,
                chunks=chunks,
                name=name,
            )
        except ValidationError as err:
            raise ReaderError(f"{source}: {err}") from err
    planes, shape = [], None
    for _channel, _marker, file in source:
        arr, axes = open_tiff(file)
        extra = [n for ax, n in zip(axes, arr.shape, strict=True) if ax not in "YX" and n != 1]
        if extra or "Y" not in axes or "X" not in axes:
            raise ReaderError(
                f"{file}: expected a single-channel stitched image (axes YX), found axes {axes!r} shape {arr.shape}"
            )
        arr = arr[tuple(slice(None) if ax in "YX" else 0 for ax in axes)]
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ReaderError(
                f"{file}: image of shape {arr.shape}, but {source[0][2].name} has shape {shape}; expected every "
                "channel of a region to have the same size"
            )
        planes.append(arr)
    assert shape is not None
    marker_of = dict(zip(cells.channels, cells.markers, strict=True))
    names = [marker_of.get(channel, marker) for channel, marker, _ in source]
    if len(set(names)) != len(names):
        names = [f"{m}_{k}" if names.count(m) > 1 else m for k, m in enumerate(names)]
    try:
        return Image2DModel.parse(
            da.stack(planes, axis=0),
            dims=("c", "y", "x"),
            c_coords=names,
            transformations=tfs,
            scale_factors=pyramid_factors(*shape) if pyramid else None,
            chunks=chunks,
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{source[0][2].parent}: {err}") from err


def _shapes_element(obs: pd.DataFrame, radius: float | None, tfs: dict, name: str, file: str) -> Any:
    from tissuestack.elements import ShapesModel

    if radius is not None:
        radii = np.full(len(obs), float(radius))
    elif "size" in obs.columns:
        radii = np.sqrt(np.maximum(obs["size"].to_numpy(np.float64), 1.0) / np.pi)
    else:
        radii = np.ones(len(obs))
    try:
        return ShapesModel.parse(
            obs[["x", "y"]].to_numpy(np.float64),
            geometry=0,
            radius=radii,
            index=pd.Index(obs["cell_id"].to_numpy(np.int64)),
            transformations=tfs,
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _table(cells: _Cells, regions: list[int]) -> Any:
    import anndata as ad

    from tissuestack.elements import TableModel

    obs = cells.obs.copy()
    elements = [f"{_region_name(r)}_cells" for r in regions]
    obs[REGION_KEY] = pd.Categorical(
        [f"{_region_name(int(r))}_cells" for r in obs["region"]], categories=elements
    )
    if len(regions) == 1:
        obs.index = obs["cell_id"].astype(str).to_numpy()
    else:
        obs.index = [
            f"{_region_name(int(r))}_{c}" for r, c in zip(obs["region"], obs["cell_id"], strict=True)
        ]
    var = pd.DataFrame({"channel": cells.channels}, index=pd.Index(cells.markers, dtype=object).astype(str))
    adata = ad.AnnData(cells.values, obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm["spatial"] = obs[["x", "y"]].to_numpy(np.float64)
    try:
        return TableModel.parse(
            adata,
            region=elements if len(elements) > 1 else elements[0],
            region_key=REGION_KEY,
            instance_key=INSTANCE_KEY,
            name=TABLE_NAME,
        )
    except ValidationError as err:
        raise ReaderError(f"{cells.files[0]}: {err}") from err


# ------------------------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------------------------


@with_folder_hints('codex')
def iter_codex(
    path: str | Path,
    *,
    fcs: bool = True,
    compensated: bool = True,
    regions: int | Sequence[int] | None = None,
    images: bool = True,
    image_file: str | None = None,
    cell_radius: float | None = None,
    pixel_size_um: float | None = None,
    image_chunks: int | Sequence[int] | None = None,
    pyramid: bool = True,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a CODEX processor output folder: per region the image and the cell circles, then the
    table. Parameters are those of :func:`codex`; every file is located and read before the first yield."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a CODEX processor output folder")
    files = _cell_files(path, fcs, compensated)
    cells = _read_cells(files)
    present = sorted(int(r) for r in pd.unique(cells.obs["region"]))
    if regions is not None:
        wanted = [int(regions)] if isinstance(regions, int | np.integer) else [int(r) for r in regions]
        absent = [r for r in wanted if r not in present]
        if absent:
            raise ReaderError(
                f"{', '.join(f.name for f in files)}: no cells in region(s) {absent}; the data have the regions "
                f"{present}"
            )
        keep = cells.obs["region"].isin(wanted).to_numpy()
        cells = _Cells(
            cells.obs.loc[keep].reset_index(drop=True),
            cells.values[keep],
            cells.channels,
            cells.markers,
            cells.files,
        )
        present = sorted(wanted)
    if image_file is not None and len(present) > 1:
        raise ReaderError(
            f"{path}: image_file={image_file!r} names one image but the data have the regions {present}; pass "
            "regions= to read one region"
        )
    sources = {r: _image_source(path, r, len(present), image_file) if images else None for r in present}
    for r, source in sources.items():
        if images and source is None:
            warnings.warn(
                f"{path}: no image for region {_region_name(r)} (expected {_region_name(r)}*.tif or "
                f"stitched/{_region_name(r)}/{_region_name(r)}_cyc<ccc>_ch<nnn>_<marker>.tif); reading the cells only",
                UserWarning,
                stacklevel=2,
            )

    label = ", ".join(f.name for f in files)
    for r in present:
        cs = "global" if len(present) == 1 else _region_name(r)
        tfs = _transformations(cs, pixel_size_um)
        if sources[r] is not None:
            name = f"{_region_name(r)}_image"
            yield name, _image_element(sources[r], cells, tfs, name, pyramid=pyramid, chunks=image_chunks)
        name = f"{_region_name(r)}_cells"
        rows = cells.obs[cells.obs["region"] == r]
        yield name, _shapes_element(rows, cell_radius, tfs, name, label)
    yield TABLE_NAME, _table(cells, present)


def codex(
    path: str | Path,
    *,
    fcs: bool = True,
    compensated: bool = True,
    regions: int | Sequence[int] | None = None,
    images: bool = True,
    image_file: str | None = None,
    cell_radius: float | None = None,
    pixel_size_um: float | None = None,
    image_chunks: int | Sequence[int] | None = None,
    pyramid: bool = True,
):
    """Read an Akoya CODEX / PhenoCycler processor output folder.

    Parameters
    ----------
    path
        The data folder; every file is found relative to it.
    fcs
        Read the per-cell ``.fcs`` files (default) or their ``.csv`` twins.
    compensated
        Read ``reg<NNN>_compensated`` (default) or ``reg<NNN>_uncompensated`` files.
    regions
        Region number(s) (1-based) to read; default all.
    images
        Read the stitched region images.
    image_file
        The image of the (single) region, relative to ``path`` or absolute; default found by name.
    cell_radius
        Radius of the cell circles in pixels; default ``sqrt(size / pi)``.
    pixel_size_um
        µm per pixel: every element gets this ``Scale`` (default: pixel units).
    image_chunks
        Dask chunks of the images.
    pyramid
        Build a lazy pyramid for the images.

    Returns
    -------
    SpatialData
        Per region ``reg<rrr>_image`` and ``reg<rrr>_cells``; table ``table`` annotating the cells by integer
        ``cell_id``. One region: coordinate system ``global``; several: ``reg<rrr>`` each.

    Raises
    ------
    ReaderError
        A file is missing, truncated or malformed (FCS header/TEXT/DATA, missing parameters, non-integer ids, an
        unknown FCS version); the message names the file and what was expected.
    """
    return collect(
        iter_codex(
            path,
            fcs=fcs,
            compensated=compensated,
            regions=regions,
            images=images,
            image_file=image_file,
            cell_radius=cell_radius,
            pixel_size_um=pixel_size_um,
            image_chunks=image_chunks,
            pyramid=pyramid,
        )
    )


TECHNOLOGY = Technology(
    name="codex",
    summary="Akoya CODEX / PhenoCycler processor output: per-cell FCS or CSV data (channels mapped through PnN/PnS) "
    "and stitched region images, in pixels",
    iter_elements=iter_codex,
    options=(
        Option("fcs", bool, True, "read the .fcs files (--no-fcs: the .csv twins)"),
        Option("compensated", bool, True, "read the compensated files (--no-compensated: uncompensated)"),
        Option("regions", tuple, None, "region numbers to read (default all)"),
        Option("images", bool, True, "read the stitched images"),
        Option("image_file", str, None, "image of the single region (relative to the input folder)"),
        Option("cell_radius", float, None, "circle radius in pixels (default sqrt(size/pi))"),
        Option("pixel_size_um", float, None, "µm per pixel (default: pixel units)"),
        Option("pyramid", bool, True, "build an image pyramid"),
    ),
)
