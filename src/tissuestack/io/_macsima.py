"""MACSima (Miltenyi MACSiQ View) processed output: single-channel OME-TIFFs assembled into one image.

Layout (``docs/vendors.md`` §6.8): a folder (searched recursively for ``*.tif`` / ``*.tiff``) of
single-channel OME-TIFFs, one per cycle, marker and scan type. File names are not parsed; everything comes from
the OME-XML of each file (read with :mod:`xml.etree.ElementTree`):

* the software version, MapAnnotation key ``SoftwareVersion`` (v1) or ``Software version`` (v0); its major
  number selects the key set (any other major number is an error naming the file);
* v1 keys: ``Biomarker`` (or ``Dye``, e.g. DAPI), ``Clone``, ``Fluorochrome`` (or ``Dye``), ``ExposureTime``,
  ``Cycle``, ``RoiId``, ``ScanType`` (``S`` stain, ``B`` bleach, ``AF`` autofluorescence);
* v0 keys: ``Screen/Reagent@Name`` = ``<antigen>__<clone>``, ``Fluorochrome``, ``Exposure time``, ``Cycle`` (or
  ``MICS cycle ID``), ``ROI ID``, ``MICS cycle type`` (``AntigenCycle``, ``BleachCycle``);
* the well ``Plate/Well@ExternalIdentifier``, the offset ``Pixels/Plane@PositionX/Y`` (pixels, or a length unit
  converted with the pixel size) and the pixel size ``Pixels@PhysicalSizeX/Y`` (µm, nm, ...).

Bleach images get ``_background`` appended to their marker name. Files without OME-XML, or whose OME-XML has no
MACSima annotations, marker name or cycle, are skipped with a warning.

Elements, in the coordinate system named after the folder (``<folder>``, spaces as ``_``), ``Scale`` by the pixel
size (pixels -> µm; ``Identity`` with ``pixel_size=False``):

* image ``<folder>_image``: the channels sorted by cycle, then name; duplicated names get `` (1)``, `` (2)``, ...
  (or every name is ``R<cycle> <name>`` with ``include_cycle_in_channel_name``); images of different sizes are
  zero-padded into one frame by their offsets; lazy over the files;
* table ``<folder>_table`` with zero rows whose ``var`` describes the channels (``name``, ``cycle``,
  ``imagetype`` = stain / bleach / autofluorescence, ``well``, ``ROI``, ``fluorophore``, ``clone``,
  ``exposure``);
* when more than ``split_nuclei_threshold`` channels contain ``nuclei_channel`` (``DAPI``):
  ``<folder>_nuclei_image`` / ``<folder>_nuclei_table`` with all of them, and the main image keeps only the first
  and the last (as the reference reader does).

With ``multiple_folders`` each folder directly below ``path`` is read that way, named after itself.
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "iter_macsima", "macsima", "parse_macsima_ome"]

TIFF = re.compile(r".*\.tiff?$", re.IGNORECASE)
IMAGETYPES = {
    "BleachCycle": "bleach",
    "B": "bleach",
    "AntigenCycle": "stain",
    "S": "stain",
    "AF": "autofluorescence",
}
_PIXEL_UNITS = ("pixel", "px", "reference frame", "")


@dataclass(frozen=True)
class Channel:
    """One MACSima file: its channel metadata as parsed from the OME-XML."""

    file: Path
    name: str
    cycle: int
    imagetype: str | None
    well: str | None
    roi: int | None
    fluorophore: str | None
    clone: str | None
    exposure: float | None
    offset: tuple[float, float]
    """(y, x) position of the image in pixels."""
    pixel_size: tuple[float, float] | None
    """(y, x) µm per pixel."""
    version: str


class _NotMacsima(Exception):
    """The file holds no MACSima metadata (skipped with a warning)."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element | None, name: str) -> list[ET.Element]:
    return [] if element is None else [el for el in element if _local(el.tag) == name]


def _first(element: ET.Element | None, *path: str) -> ET.Element | None:
    for name in path:
        found = _children(element, name)
        element = found[0] if found else None
    return element


def _map_values(root: ET.Element) -> dict[str, str]:
    """Every MapAnnotation key -> value; the first occurrence of a key wins."""
    merged: dict[str, str] = {}
    for structured in _children(root, "StructuredAnnotations"):
        for annotation in _children(structured, "MapAnnotation"):
            for m in _children(_first(annotation, "Value"), "M"):
                key = m.get("K")
                if key is not None and key not in merged:
                    merged[key] = (m.text or "").strip()
    return merged


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _major(version: str, file: Path) -> int:
    text = version.strip().lstrip("vV")
    match = re.match(r"^(\d+)", text)
    if match is None:
        raise ReaderError(
            f"{file}: software version {version!r} is not a version number (expected e.g. 1.2.0)"
        )
    return int(match.group(1))


def parse_macsima_ome(xml: str, file: Path) -> dict[str, Any]:
    """The channel metadata of one MACSima OME-XML document.

    Returns a dict with ``name``, ``clone``, ``fluorophore``, ``cycle``, ``imagetype``, ``well``, ``roi``,
    ``exposure``, ``offset`` ((y, x) in the units of the Plane positions, with ``offset_unit``),
    ``pixel_size`` ((y, x) µm or None) and ``version``. Raises ``_NotMacsima`` when the document carries no
    MACSima annotations and :class:`ReaderError` when its software version is unknown.
    """
    from tissuestack.io._tiff import _to_um

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise _NotMacsima(f"the OME-XML does not parse ({err})") from err
    values = _map_values(root)
    version = next((values[k] for k in ("SoftwareVersion", "Software version") if values.get(k)), None)
    if version is None:
        raise _NotMacsima("no SoftwareVersion / Software version MapAnnotation")
    major = _major(version, file)
    meta: dict[str, Any] = {"version": version}
    if major == 1:
        meta["name"] = values.get("Biomarker") or values.get("Dye") or None
        meta["clone"] = values.get("Clone") or None
        meta["fluorophore"] = values.get("Fluorochrome") or values.get("Dye") or None
        meta["exposure"] = _float(values.get("ExposureTime"))
        meta["cycle"] = _int(values.get("Cycle"))
        meta["roi"] = _int(values.get("RoiId"))
        scan = values.get("ScanType") or None
    elif major == 0:
        reagent = _first(root, "Screen", "Reagent")
        reagent_name = reagent.get("Name") if reagent is not None else None
        antigen, _, clone = (reagent_name or "").partition("__")
        meta["name"] = antigen or None
        meta["clone"] = clone or None
        meta["fluorophore"] = values.get("Fluorochrome") or None
        meta["exposure"] = _float(values.get("Exposure time"))
        meta["cycle"] = _int(values.get("Cycle") or values.get("MICS cycle ID"))
        meta["roi"] = _int(values.get("ROI ID"))
        scan = values.get("MICS cycle type") or None
    else:
        raise ReaderError(
            f"{file}: unknown MACSiQ View software version {version!r}; expected major version 0 or 1"
        )
    if meta["name"] is None:
        raise _NotMacsima("no marker name (Biomarker / Dye, or Screen/Reagent@Name)")
    if meta["cycle"] is None:
        raise _NotMacsima("no cycle number")
    if scan in ("B", "BleachCycle"):
        meta["name"] = f"{meta['name']}_background"
    meta["imagetype"] = IMAGETYPES.get(scan, scan) if scan else None
    well = _first(root, "Plate", "Well")
    meta["well"] = (well.get("ExternalIdentifier") or None) if well is not None else None
    pixels = _first(root, "Image", "Pixels")
    plane = _first(pixels, "Plane")
    px = _float(plane.get("PositionX")) if plane is not None else None
    py = _float(plane.get("PositionY")) if plane is not None else None
    meta["offset"] = (py or 0.0, px or 0.0)
    meta["offset_unit"] = (plane.get("PositionXUnit") or "") if plane is not None else ""
    size = None
    if pixels is not None:
        sy = _to_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit"))
        sx = _to_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
        if sx is not None or sy is not None:
            size = (sy or sx, sx or sy)
    meta["pixel_size"] = size
    return meta


def _read_channel(file: Path) -> Channel | None:
    import tifffile

    from tissuestack.io._tiff import _to_um

    try:
        with tifffile.TiffFile(file) as tif:
            page = tif.pages.first
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)), default=0)
            if not page.dataoffsets or end > tif.filehandle.size:
                raise ReaderError(
                    f"{file}: truncated TIFF: its first image needs {end} bytes, the file has "
                    f"{tif.filehandle.size}"
                )
            xml = tif.ome_metadata if tif.is_ome else None
            if xml is None and page.description.lstrip().startswith("<"):
                xml = page.description
    except ReaderError:
        raise
    except Exception as err:
        raise ReaderError(f"{file}: not a readable TIFF file (truncated?): {err}") from err
    if not xml:
        warnings.warn(
            f"{file}: no OME-XML metadata; skipped (not a MACSima image)", UserWarning, stacklevel=3
        )
        return None
    try:
        meta = parse_macsima_ome(xml, file)
    except _NotMacsima as err:
        warnings.warn(
            f"{file}: cannot parse the MACSima metadata ({err}); skipped", UserWarning, stacklevel=3
        )
        return None
    oy, ox = meta["offset"]
    unit = meta["offset_unit"].strip().lower()
    if unit not in _PIXEL_UNITS:
        factor = _to_um("1", meta["offset_unit"].strip())
        if factor is None or meta["pixel_size"] is None:
            raise ReaderError(
                f"{file}: Plane position unit {meta['offset_unit']!r} cannot be converted to pixels (expected "
                "pixels or a length unit with PhysicalSizeX/Y)"
            )
        oy, ox = oy * factor / meta["pixel_size"][0], ox * factor / meta["pixel_size"][1]
    return Channel(
        file=file,
        name=str(meta["name"]),
        cycle=int(meta["cycle"]),
        imagetype=meta["imagetype"],
        well=meta["well"],
        roi=meta["roi"],
        fluorophore=meta["fluorophore"],
        clone=meta["clone"],
        exposure=meta["exposure"],
        offset=(float(oy), float(ox)),
        pixel_size=meta["pixel_size"],
        version=meta["version"],
    )


def _channel_names(channels: Sequence[Channel], with_cycle: bool) -> list[str]:
    if with_cycle:
        return [f"R{c.cycle} {c.name}" for c in channels]
    counts = Counter(c.name for c in channels)
    seen: Counter = Counter()
    out = []
    for c in channels:
        seen[c.name] += 1
        out.append(f"{c.name} ({seen[c.name]})" if counts[c.name] > 1 else c.name)
    return out


def _plane(file: Path) -> Any:
    """Level 0 of a single-channel file as a lazy (y, x) dask array."""
    from tissuestack.io._tiff import open_tiff

    arr, axes = open_tiff(file)
    index = []
    for ax, n in zip(axes, arr.shape, strict=True):
        if ax in "YX":
            index.append(slice(None))
        elif n == 1:
            index.append(0)
        else:
            raise ReaderError(
                f"{file}: axis {ax!r} has {n} entries (axes {axes!r}, shape {arr.shape}); expected a "
                "single-channel image"
            )
    plane = arr[tuple(index)]
    if axes.index("Y") > axes.index("X"):
        plane = plane.T
    return plane


def _frame(channels: Sequence[Channel], planes: Sequence[Any], folder: Path) -> tuple[int, ...] | None:
    """(top, left, height, width) of the frame holding every image at its Plane position (``None``: all images
    have one size and position, no padding needed). ``top`` / ``left`` are the smallest offsets."""
    shapes = {tuple(int(n) for n in p.shape) for p in planes}
    if len(shapes) == 1 and len({c.offset for c in channels}) == 1:
        return None
    top = min(c.offset[0] for c in channels)
    left = min(c.offset[1] for c in channels)
    height = max(int(p.shape[0]) + round(c.offset[0] - top) for c, p in zip(channels, planes, strict=True))
    width = max(int(p.shape[1]) + round(c.offset[1] - left) for c, p in zip(channels, planes, strict=True))
    if len(shapes) > 1:
        warnings.warn(
            f"{folder}: the images have different sizes {sorted(shapes)}; zero-padded by their Plane positions "
            f"into one ({height}, {width}) frame",
            UserWarning,
            stacklevel=4,
        )
    return (top, left, height, width)


def _stack(channels: Sequence[Channel], planes: Sequence[Any], frame: tuple[int, ...] | None) -> Any:
    import dask.array as da

    planes = list(planes)
    dtypes = {p.dtype for p in planes}
    if len(dtypes) > 1:
        dtype = np.result_type(*dtypes)
        planes = [p.astype(dtype) for p in planes]
    if frame is not None:
        top, left, height, width = frame
        padded = []
        for c, p in zip(channels, planes, strict=True):
            y, x = round(c.offset[0] - top), round(c.offset[1] - left)
            pad = ((y, height - p.shape[0] - y), (x, width - p.shape[1] - x))
            padded.append(da.pad(p, pad, mode="constant") if any(map(any, pad)) else p)
        planes = padded
    return da.stack(planes, axis=0)


def _image(
    channels: Sequence[Channel],
    planes: Sequence[Any],
    frame: tuple[int, ...] | None,
    names: list[str],
    folder: Path,
    tfs: dict,
    name: str,
    pyramid: bool,
    chunks: Any,
) -> Any:
    from tissuestack.elements import Image2DModel
    from tissuestack.io._merscope import pyramid_factors

    data = _stack(channels, planes, frame)
    try:
        return Image2DModel.parse(
            data,
            dims=("c", "y", "x"),
            c_coords=names,
            transformations=tfs,
            scale_factors=pyramid_factors(int(data.shape[1]), int(data.shape[2])) if pyramid else None,
            chunks=chunks,
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{folder}: {err}") from err


def _table(channels: Sequence[Channel], names: list[str], name: str) -> Any:
    import anndata as ad

    from tissuestack.elements import TableModel

    var = pd.DataFrame(
        {
            "name": names,
            "cycle": np.array([c.cycle for c in channels], dtype=np.int64),
            "imagetype": [c.imagetype for c in channels],
            "well": [c.well for c in channels],
            "ROI": pd.array([c.roi for c in channels], dtype="Int64"),
            "fluorophore": [c.fluorophore for c in channels],
            "clone": [c.clone for c in channels],
            "exposure": np.array([np.nan if c.exposure is None else c.exposure for c in channels]),
        },
        index=pd.Index(names),
    )
    for column in ("imagetype", "well", "fluorophore", "clone"):
        var[column] = pd.array(var[column].tolist(), dtype="string")
    return TableModel.parse(ad.AnnData(var=var), name=name)


def _folder_elements(
    folder: Path,
    prefix: str,
    *,
    nuclei_channel: str,
    split_nuclei_threshold: int | None,
    skip_cycles: Sequence[int] | None,
    include_cycle_in_channel_name: bool,
    pixel_size: bool,
    pyramid: bool,
    chunks: Any,
) -> Iterator[tuple[str, Any]]:
    from tissuestack.elements import sanitize_name
    from tissuestack.transforms import Identity, Scale

    files = sorted(
        f for f in folder.rglob("*") if f.is_file() and TIFF.match(f.name) and not f.name.startswith(".")
    )
    if not files:
        raise ReaderError(
            f"{folder}: no .tif / .tiff files; expected the single-channel OME-TIFFs of MACSima"
        )
    channels = [c for c in map(_read_channel, files) if c is not None]
    if not channels:
        raise ReaderError(
            f"{folder}: none of the {len(files)} TIFF file(s) carries MACSima OME-XML metadata (expected a "
            "SoftwareVersion MapAnnotation, marker and cycle)"
        )
    if skip_cycles:
        try:
            skipped = {int(c) for c in skip_cycles}
        except (TypeError, ValueError) as err:
            raise ReaderError(f"skip_cycles must be cycle numbers, got {list(skip_cycles)!r}") from err
        channels = [c for c in channels if c.cycle not in skipped]
        if not channels:
            raise ReaderError(f"{folder}: skip_cycles={list(skip_cycles)} leaves no channel")
    channels.sort(key=lambda c: (c.cycle, c.name))
    names = _channel_names(channels, include_cycle_in_channel_name)

    system = sanitize_name(prefix)
    tfs: dict[str, Any] = {system: Identity()}
    if pixel_size:
        sizes = [c.pixel_size for c in channels if c.pixel_size is not None]
        if not sizes:
            raise ReaderError(
                f"{folder}: no file gives Pixels@PhysicalSizeX/Y; expected the pixel size (or pass pixel_size=False)"
            )
        if len(set(sizes)) > 1:
            warnings.warn(
                f"{folder}: the files give different pixel sizes {sorted(set(sizes))}; using {sizes[0]} µm",
                UserWarning,
                stacklevel=3,
            )
        tfs = {system: Scale([sizes[0][0], sizes[0][1]], axes=("y", "x"))}

    planes = [_plane(c.file) for c in channels]
    frame = _frame(channels, planes, folder)  # one frame for the image and the nuclei image

    def subset(name: str, indices: list[int]) -> Iterator[tuple[str, Any]]:
        chosen = [channels[i] for i in indices]
        chosen_names = [names[i] for i in indices]
        image_name = sanitize_name(f"{prefix}_{name}image")
        yield (
            image_name,
            _image(
                chosen,
                [planes[i] for i in indices],
                frame,
                chosen_names,
                folder,
                tfs,
                image_name,
                pyramid,
                chunks,
            ),
        )
        table_name = sanitize_name(f"{prefix}_{name}table")
        yield table_name, _table(chosen, chosen_names, table_name)

    nuclei = [i for i, n in enumerate(names) if nuclei_channel and nuclei_channel in n]
    split = split_nuclei_threshold is not None and len(nuclei) > split_nuclei_threshold
    dropped = set(nuclei[1:-1]) if split else set()  # the stack keeps the first and the last nuclei channel
    yield from subset("", [i for i in range(len(channels)) if i not in dropped])
    if split:
        yield from subset("nuclei_", nuclei)


@with_folder_hints('macsima')
def iter_macsima(
    path: str | Path,
    *,
    multiple_folders: bool = False,
    filter_folder_names: Sequence[str] | None = None,
    nuclei_channel: str = "DAPI",
    split_nuclei_threshold: int | None = 2,
    skip_cycles: Sequence[int] | None = None,
    include_cycle_in_channel_name: bool = False,
    pixel_size: bool = True,
    pyramid: bool = True,
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a MACSima folder: the image, its channel table (and the nuclei image and table).

    Parameters are those of :func:`macsima`. Every file's metadata is parsed before the first element is yielded.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a MACSima output folder of OME-TIFFs")
    if split_nuclei_threshold is not None and split_nuclei_threshold < 0:
        raise ReaderError(f"split_nuclei_threshold must be >= 0 or None, got {split_nuclei_threshold!r}")
    options = dict(
        nuclei_channel=nuclei_channel,
        split_nuclei_threshold=split_nuclei_threshold,
        skip_cycles=skip_cycles,
        include_cycle_in_channel_name=include_cycle_in_channel_name,
        pixel_size=pixel_size,
        pyramid=pyramid,
        chunks=image_chunks,
    )
    if not multiple_folders:
        yield from _folder_elements(path, path.name.replace(" ", "_"), **options)
        return
    folders = [
        p
        for p in sorted(path.iterdir())
        if p.is_dir() and not (filter_folder_names and any(f in p.name for f in filter_folder_names))
    ]
    folders = [p for p in folders if any(TIFF.match(f.name) for f in p.iterdir() if f.is_file())]
    if not folders:
        raise ReaderError(f"{path}: no sub-folder holds .tif files (multiple_folders=True)")
    for folder in folders:
        yield from _folder_elements(folder, folder.name.replace(" ", "_"), **options)


def macsima(
    path: str | Path,
    *,
    multiple_folders: bool = False,
    filter_folder_names: Sequence[str] | None = None,
    nuclei_channel: str = "DAPI",
    split_nuclei_threshold: int | None = 2,
    skip_cycles: Sequence[int] | None = None,
    include_cycle_in_channel_name: bool = False,
    pixel_size: bool = True,
    pyramid: bool = True,
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
):
    """Read a MACSima (MACSiQ View) processed output folder of single-channel OME-TIFFs.

    Parameters
    ----------
    path
        The folder (its TIFFs are found recursively).
    multiple_folders
        Read each folder directly below ``path`` into its own image and table, named after it.
    filter_folder_names
        With ``multiple_folders``: skip the folders whose name contains one of these strings.
    nuclei_channel
        Text of the nuclei channel names.
    split_nuclei_threshold
        When more channels than this contain ``nuclei_channel``, they go to a separate nuclei image (``None``:
        never).
    skip_cycles
        Cycles to leave out.
    include_cycle_in_channel_name
        Name every channel ``R<cycle> <name>``.
    pixel_size
        Scale pixels to µm by the OME pixel size (otherwise identity).
    pyramid
        Build a lazy pyramid (halvings down to 512 px).
    image_chunks
        Dask chunks of the images.

    Returns
    -------
    SpatialData
        ``<folder>_image`` and ``<folder>_table`` (and ``<folder>_nuclei_image`` / ``<folder>_nuclei_table``) in
        the coordinate system ``<folder>``.

    Raises
    ------
    ReaderError
        The folder is missing or has no MACSima file, a TIFF is unreadable or not single-channel, a file's
        software version is unknown, or no file gives the pixel size; the message names the file.
    """
    return collect(
        iter_macsima(
            path,
            multiple_folders=multiple_folders,
            filter_folder_names=filter_folder_names,
            nuclei_channel=nuclei_channel,
            split_nuclei_threshold=split_nuclei_threshold,
            skip_cycles=skip_cycles,
            include_cycle_in_channel_name=include_cycle_in_channel_name,
            pixel_size=pixel_size,
            pyramid=pyramid,
            image_chunks=image_chunks,
        )
    )


TECHNOLOGY = Technology(
    name="macsima",
    summary="MACSima (MACSiQ View v0/v1) folder of single-channel OME-TIFFs: one image by cycle and marker (and "
    "a nuclei image), channel tables; pixels scaled to µm",
    iter_elements=iter_macsima,
    options=(
        Option("multiple_folders", bool, False, "one image per sub-folder"),
        Option("filter_folder_names", tuple, None, "with multiple_folders: skip folders containing these"),
        Option("nuclei_channel", str, "DAPI", "text of the nuclei channel names"),
        Option("split_nuclei_threshold", int, 2, "more nuclei channels than this go to a nuclei image"),
        Option("skip_cycles", tuple, None, "cycles to leave out"),
        Option("include_cycle_in_channel_name", bool, False, "name channels 'R<cycle> <name>'"),
        Option("pixel_size", bool, True, "scale pixels to µm by the OME pixel size"),
        Option("pyramid", bool, True, "build a lazy pyramid"),
    ),
)
