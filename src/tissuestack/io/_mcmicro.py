"""MCMICRO (multiple-choice microscopy pipeline) output folders, whole-slide or tissue microarray (TMA).

Layout (``docs/vendors.md`` §6.4)::

    <folder>/qc/params.yml                                     ``workflow: tma: true|false`` selects the mode
    <folder>/markers.csv                                       channel_number, cycle_number, marker_name, ...
    <folder>/registration/<sample>.ome.tif                     the stitched, registered (c, y, x) image (one file)
    <folder>/segmentation/<method>-<sample>/<mask>.ome.tif     e.g. unmicst-exemplar-001/cell.ome.tif
    <folder>/quantification/<sample>--<method>_<mask>.csv      CellID, one column per marker, X/Y_centroid, ...
    <folder>/raw/<name>.ome.tiff, illumination/<name>-dfp.tif  optional: raw cycles and illumination profiles
    TMA mode, in addition:
    <folder>/dearray/<core>.ome.tif, dearray/masks/<core>_<name>.tif   per-core images and core masks
    <folder>/qc/coreograph/centroidsY-X.txt                    "y x" core centres in the TMA map, core 1 first

Elements, in the coordinate system ``global`` (pixels of the registered image, or of the TMA map):

* whole slide: image ``<sample>_image`` (channels named by ``markers.csv``), labels ``<sample>_<mask>``;
* TMA: image ``tma_map`` (the whole registered TMA), per core ``core_<core>_image``, labels ``core_<core>_<mask>``
  and ``core_dearray_<core>_<name>`` (the core masks), each core translated so that its centre lands on its
  centroid in the map (by centre - half the core size, as the reference reader);
* images ``<name>`` of ``raw/`` and ``<name>-dfp`` / ``<name>-ffp`` of ``illumination/``, each in its own
  coordinate system ``<name>`` (they are not registered to the slide);
* one table per quantification CSV, named after the CSV stem: ``X`` = the marker columns (var = the rows of
  ``markers.csv``), ``obs`` the other columns, ``region`` = the labels element of ``<method>`` / ``<mask>``,
  instance key ``CellID`` (integer), ``obsm["spatial"]`` = (``X_centroid``, ``Y_centroid``). (In TMA mode the
  reference reader concatenates the cores' tables into one ``segmentation_table``.)

When two segmentation methods write a mask of the same name, their labels are ``<sample>_<method>_<mask>``.
Images and labels are lazy over the TIFFs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "iter_mcmicro", "mcmicro"]

PARAMS_FILE = "qc/params.yml"
MARKERS_FILE = "markers.csv"
CENTROIDS_FILE = "qc/coreograph/centroidsY-X.txt"
IMAGE_SUFFIX = ".ome.tif"
MARKER_COLUMNS = ("channel_number", "marker_name")
INSTANCE_KEY = "CellID"
REGION_KEY = "region"
COORDS = ("X_centroid", "Y_centroid")
TIFF = re.compile(r".*\.tiff?$", re.IGNORECASE)


def _stem(file: Path) -> str:
    """File name without its (one or two) TIFF suffixes: ``a.ome.tif`` -> ``a``."""
    name = re.sub(r"\.tiff?$", "", file.name, flags=re.IGNORECASE)
    return re.sub(r"\.ome$", "", name, flags=re.IGNORECASE)


def _tma_mode(path: Path, tma: bool | None) -> bool:
    if tma is not None:
        return bool(tma)
    file = path / PARAMS_FILE
    if not file.is_file():
        raise ReaderError(
            f"{file}: MCMICRO parameters not found (expected qc/params.yml with workflow: tma); pass tma= "
            "to choose the mode"
        )
    import yaml

    try:
        params = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ReaderError(f"{file}: not a readable YAML file ({err})") from err
    workflow = params.get("workflow") if isinstance(params, dict) else None
    value = workflow.get("tma", False) if isinstance(workflow, dict) else None
    if value is None:
        raise ReaderError(
            f"{file}: no 'workflow' section; expected the MCMICRO parameters (workflow: tma: ...)"
        )
    if not isinstance(value, bool):
        raise ReaderError(f"{file}: workflow.tma is {value!r}; expected true or false")
    return value


def _markers(path: Path) -> pd.DataFrame:
    file = path / MARKERS_FILE
    if not file.is_file():
        raise ReaderError(
            f"{file}: MCMICRO marker list not found (expected markers.csv: channel_number, ...)"
        )
    try:
        markers = pd.read_csv(file)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReaderError(f"{file}: cannot read the marker list: {err}") from err
    missing = [c for c in MARKER_COLUMNS if c not in markers.columns]
    if missing:
        raise ReaderError(
            f"{file}: no column(s) {missing}; expected channel_number, cycle_number, marker_name (the file has "
            f"{markers.columns.tolist()})"
        )
    if not markers["channel_number"].is_monotonic_increasing:
        raise ReaderError(f"{file}: channel_number is not increasing; expected one row per channel, in order")
    markers["marker_name"] = markers["marker_name"].astype(str)
    dup = markers["marker_name"][markers["marker_name"].duplicated()].tolist()
    if dup:
        raise ReaderError(f"{file}: marker name(s) {dup[:5]} appear twice; expected one name per channel")
    markers.index = pd.Index(markers["marker_name"].tolist())
    return markers


def _only_image(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise ReaderError(f"{folder}: {what} folder not found (expected <name>{IMAGE_SUFFIX} in it)")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(IMAGE_SUFFIX))
    if len(files) != 1:
        raise ReaderError(
            f"{folder}: {len(files)} {IMAGE_SUFFIX} files ({[f.name for f in files][:5]}); expected exactly one "
            f"{what} image"
        )
    return files[0]


def _centroids(path: Path) -> pd.DataFrame:
    file = path / CENTROIDS_FILE
    if not file.is_file():
        raise ReaderError(f"{file}: TMA core centres not found (expected 'y x' per line, core 1 first)")
    try:
        frame = pd.read_csv(file, sep=r"\s+", header=None, engine="python")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReaderError(f"{file}: cannot read the TMA core centres: {err}") from err
    if frame.shape[1] != 2 or not all(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns):
        raise ReaderError(f"{file}: expected two numbers ('y x') per line, got {frame.shape[1]} column(s)")
    frame.columns = ["y", "x"]
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def _raster(
    file: Path, kind: str, transformations: dict, name: str, chunks: Any, channels: Any = None
) -> Any:
    from tissuestack.io._merscope import pyramid_factors
    from tissuestack.io._tiff import tiff_metadata, tiff_to_element

    meta = tiff_metadata(file)
    factors = None
    if meta.n_levels == 1:
        y, x = (meta.shape[meta.axes.index(a)] for a in "YX")
        factors = pyramid_factors(y, x)
    try:
        return tiff_to_element(
            file,
            kind=kind,
            channel_names=channels,
            transformations=transformations,
            scale_factors=factors,
            chunks=chunks,
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _image_channels(file: Path, markers: pd.DataFrame, strict: bool) -> list[str] | None:
    from tissuestack.io._tiff import tiff_metadata

    meta = tiff_metadata(file)
    n = meta.shape[meta.axes.index("C")] if "C" in meta.axes else 1
    if n == len(markers):
        return markers.index.tolist()
    if strict:
        raise ReaderError(
            f"{file}: the image has {n} channel(s) but {MARKERS_FILE} lists {len(markers)} marker(s); expected one "
            "marker per channel"
        )
    return None


def _core_translation(centroids: pd.DataFrame, core: int, file: Path, shape: tuple[int, int]) -> Any:
    from tissuestack.transforms import Translation

    if core not in centroids.index:
        raise ReaderError(
            f"{file}: core {core} has no centre in {CENTROIDS_FILE} (it lists cores 1-{len(centroids)})"
        )
    height, width = shape
    cy, cx = centroids.loc[core, "y"], centroids.loc[core, "x"]
    return Translation([float(cx) - width / 2, float(cy) - height / 2], axes=("x", "y"))


def _core_number(text: str, file: Path) -> int:
    match = re.search(r"(\d+)$", text)
    if match is None:
        raise ReaderError(
            f"{file}: cannot tell the TMA core from {text!r}; expected a name ending in the core number"
        )
    return int(match.group(1))


def _segmentations(path: Path, sample_of: Any) -> list[tuple[str, str, str, Path]]:
    """(sample, method, mask, file) of every ``segmentation/<method>-<sample>/<mask>.ome.tif``."""
    folder = path / "segmentation"
    if not folder.is_dir():
        return []
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        method, sample = sample_of(sub)
        for file in sorted(f for f in sub.iterdir() if f.is_file() and f.name.endswith(IMAGE_SUFFIX)):
            out.append((sample, method, _stem(file), file))
    return out


def _quantification_files(path: Path) -> list[tuple[str, str, str, Path]]:
    """(sample, method, mask, file) of every ``quantification/<sample>--<method>_<mask>.csv``."""
    folder = path / "quantification"
    if not folder.is_dir():
        return []
    out = []
    for file in sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(".csv")):
        match = re.match(r"^(.+?)--(.+)_([^_]+)$", file.stem)
        if match is None:
            raise ReaderError(
                f"{file}: the quantification file name is not <sample>--<method>_<mask>.csv (e.g. "
                "exemplar-001--unmicst_cell.csv)"
            )
        out.append((match.group(1), match.group(2), match.group(3), file))
    return out


def _table(file: Path, markers: pd.DataFrame, region: str, name: str) -> Any:
    import anndata as ad

    from tissuestack.elements import TableModel

    try:
        frame = pd.read_csv(file)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReaderError(f"{file}: cannot read the quantification table: {err}") from err
    var = markers.index.tolist()
    missing = [c for c in (INSTANCE_KEY, *COORDS, *var) if c not in frame.columns]
    if missing:
        raise ReaderError(
            f"{file}: no column(s) {missing[:8]}; expected {INSTANCE_KEY}, one column per marker of "
            f"{MARKERS_FILE}, {COORDS[0]} and {COORDS[1]} (the file has {frame.columns.tolist()[:12]})"
        )
    empty = frame[[INSTANCE_KEY, *COORDS, *var]].isna().any(axis=1).to_numpy()
    if empty.any():
        raise ReaderError(
            f"{file}: {int(empty.sum())} row(s) (e.g. row {int(np.argmax(empty)) + 1}) have empty {INSTANCE_KEY}, "
            "centroid or marker values; expected a complete table (truncated?)"
        )
    ids = frame[INSTANCE_KEY]
    if not pd.api.types.is_integer_dtype(ids):
        raise ReaderError(
            f"{file}: {INSTANCE_KEY} holds {ids.dtype} values; expected the integer label of each cell"
        )
    obs = frame.drop(columns=[*var, *COORDS])
    obs.index = obs[INSTANCE_KEY].astype(str).to_numpy()
    obs[INSTANCE_KEY] = ids.to_numpy(np.int64)
    obs[REGION_KEY] = pd.Categorical([region] * len(obs))
    var_frame = markers.copy()
    var_frame.index = var_frame.index.astype(str)
    adata = ad.AnnData(
        frame[var].to_numpy(np.float64),
        obs=obs,
        var=var_frame,
        obsm={"spatial": frame[list(COORDS)].to_numpy(np.float64)},
    )
    try:
        return TableModel.parse(
            adata, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=name
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _extra_images(path: Path, raw: bool, illumination: bool, chunks: Any) -> Iterator[tuple[str, Any]]:
    from tissuestack.elements import sanitize_name
    from tissuestack.transforms import Identity

    for folder_name, wanted in (("raw", raw), ("illumination", illumination)):
        folder = path / folder_name
        if not wanted or not folder.is_dir():
            continue
        for file in sorted(f for f in folder.iterdir() if f.is_file()):
            if not TIFF.match(file.name):
                warnings.warn(f"{file}: not a TIFF, skipped", UserWarning, stacklevel=3)
                continue
            name = sanitize_name(_stem(file))
            system = re.sub(r"-(dfp|ffp)$", "", name) if folder_name == "illumination" else name
            yield name, _raster(file, "image", {system: Identity()}, name, chunks)


@with_folder_hints('mcmicro')
def iter_mcmicro(
    path: str | Path,
    *,
    tma: bool | None = None,
    images: bool = True,
    labels: bool = True,
    tables: bool = True,
    raw: bool = True,
    illumination: bool = True,
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of an MCMICRO folder: images, labels, raw/illumination images, then the tables.

    Parameters are those of :func:`mcmicro`. Every file is located (and the tables' columns checked against the
    marker list when read) before the table that needs it is yielded.
    """
    from tissuestack.elements import sanitize_name
    from tissuestack.io._tiff import tiff_metadata
    from tissuestack.transforms import Identity

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(
            f"{path}: not a directory; expected an MCMICRO output folder (markers.csv, registration/)"
        )
    is_tma = _tma_mode(path, tma)
    markers = _markers(path)
    registration = _only_image(path / "registration", "registration")
    identity = {"global": Identity()}

    centroids = _centroids(path) if is_tma else None
    cores: dict[int, Path] = {}
    if is_tma:
        dearray = path / "dearray"
        if not dearray.is_dir():
            raise ReaderError(f"{dearray}: TMA core folder not found (expected dearray/<core>{IMAGE_SUFFIX})")
        for file in sorted(f for f in dearray.iterdir() if f.is_file() and f.name.endswith(IMAGE_SUFFIX)):
            cores[_core_number(_stem(file), file)] = file
        if not cores:
            raise ReaderError(f"{dearray}: no <core>{IMAGE_SUFFIX} files")

        def sample_of(folder: Path) -> tuple[str, str]:
            core = _core_number(folder.name, folder)
            method = re.sub(r"-?\d+$", "", folder.name)
            return method or folder.name, str(core)

    else:
        sample = _stem(registration)

        def sample_of(folder: Path) -> tuple[str, str]:
            suffix = f"-{sample}"
            return (folder.name[: -len(suffix)] if folder.name.endswith(suffix) else folder.name), sample

    def prefix(s: str) -> str:
        return f"core_{s}" if is_tma else s

    segmentations = _segmentations(path, sample_of)
    shared = pd.Series([(s, m) for s, _, m, _ in segmentations]).duplicated(keep=False).tolist()
    label_names: dict[tuple[str, str, str], str] = {}
    taken: list[str] = []
    for (s, method, mask, _), clash in zip(segmentations, shared, strict=True):
        label = sanitize_name(f"{prefix(s)}_{method}_{mask}" if clash else f"{prefix(s)}_{mask}", taken)
        label_names[(s, method, mask)] = label
        taken.append(label)
    quantification = _quantification_files(path) if tables else []
    if is_tma:  # "01--unmicst_cell.csv" is core 1, as the "unmicst-1" folder
        quantification = [(str(int(s)) if s.isdigit() else s, m, k, f) for s, m, k, f in quantification]

    def translation(core: int, file: Path) -> dict:
        meta = tiff_metadata(file)
        shape = (meta.shape[meta.axes.index("Y")], meta.shape[meta.axes.index("X")])
        return {"global": _core_translation(centroids, core, file, shape)}

    if images:
        if is_tma:
            yield (
                "tma_map",
                _raster(
                    registration,
                    "image",
                    identity,
                    "tma_map",
                    image_chunks,
                    _image_channels(registration, markers, strict=False),
                ),
            )
            for core, file in cores.items():
                name = f"core_{core}_image"
                channels = _image_channels(file, markers, strict=True)
                yield name, _raster(file, "image", translation(core, file), name, image_chunks, channels)
        else:
            name = sanitize_name(f"{sample}_image")
            channels = _image_channels(registration, markers, strict=True)
            yield name, _raster(registration, "image", identity, name, image_chunks, channels)
    if labels:
        for s, method, mask, file in segmentations:
            name = label_names[(s, method, mask)]
            tfs = translation(int(s), file) if is_tma else identity
            yield name, _raster(file, "labels", tfs, name, image_chunks)
        if is_tma and (path / "dearray" / "masks").is_dir():
            for file in sorted(
                f for f in (path / "dearray" / "masks").iterdir() if f.is_file() and TIFF.match(f.name)
            ):
                stem = _stem(file)
                core = _core_number(stem.split("_")[0], file)
                name = sanitize_name(f"core_dearray_{stem}")
                yield name, _raster(file, "labels", translation(core, file), name, image_chunks)
    yield from _extra_images(path, raw, illumination, image_chunks)
    for s, method, mask, file in quantification:
        region = label_names.get((s, method, mask))
        if region is None:
            candidates = [v for (s2, _, m2), v in label_names.items() if s2 == s and m2 == mask]
            region = candidates[0] if len(candidates) == 1 else sanitize_name(f"{prefix(s)}_{mask}")
            if not candidates:
                warnings.warn(
                    f"{file}: no segmentation/{method}-{s}/{mask}{IMAGE_SUFFIX}; the table annotates {region!r}, "
                    "which is not read",
                    UserWarning,
                    stacklevel=2,
                )
        name = sanitize_name(file.stem)
        yield name, _table(file, markers, region, name)


def mcmicro(
    path: str | Path,
    *,
    tma: bool | None = None,
    images: bool = True,
    labels: bool = True,
    tables: bool = True,
    raw: bool = True,
    illumination: bool = True,
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
):
    """Read an MCMICRO output folder (whole slide or tissue microarray).

    Parameters
    ----------
    path
        The MCMICRO output folder (``markers.csv``, ``qc/params.yml``, ``registration/``, ``segmentation/``,
        ``quantification/``; in TMA mode also ``dearray/`` and ``qc/coreograph/centroidsY-X.txt``).
    tma
        Read as a TMA (``True``) or a whole slide (``False``); default ``workflow.tma`` of ``qc/params.yml``.
    images, labels, tables
        Which elements to read (the registered / core images, the segmentation masks, the quantification tables).
    raw, illumination
        Read the images of ``raw/`` and ``illumination/`` when those folders exist.
    image_chunks
        Dask chunks of the images and labels (default: the TIFF helper's, ~1024 px tiles).

    Returns
    -------
    SpatialData
        Images, labels and one table per quantification CSV (see the module notes for the names), in ``global``
        (raw and illumination images in their own coordinate systems).

    Raises
    ------
    ReaderError
        A file or folder is missing or unreadable, ``qc/params.yml`` has no ``workflow.tma``, ``markers.csv``
        lacks its columns or does not match the image's channels, a quantification CSV lacks the marker /
        centroid / ``CellID`` columns or is badly named, or a TMA core has no centre; the message names the file.
    """
    return collect(
        iter_mcmicro(
            path,
            tma=tma,
            images=images,
            labels=labels,
            tables=tables,
            raw=raw,
            illumination=illumination,
            image_chunks=image_chunks,
        )
    )


TECHNOLOGY = Technology(
    name="mcmicro",
    summary="MCMICRO folder (whole slide or TMA): registered image with marker channels, segmentation masks, "
    "one table per quantification CSV, optional raw/illumination images",
    iter_elements=iter_mcmicro,
    options=(
        Option("tma", bool, None, "read as a tissue microarray (default: workflow.tma of qc/params.yml)"),
        Option("images", bool, True, "read the registered (and core) images"),
        Option("labels", bool, True, "read the segmentation masks"),
        Option("tables", bool, True, "read the quantification tables"),
        Option("raw", bool, True, "read the raw/ images"),
        Option("illumination", bool, True, "read the illumination/ profiles"),
    ),
)
