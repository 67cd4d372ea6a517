"""10x Genomics Visium (Space Ranger 1.x to 4.x ``outs/`` folder): spots as circles, their counts table and the
hires, lowres and full-resolution images.

Layout (``docs/vendors.md`` §2)::

    outs/
      (<library_id>_)filtered_feature_bc_matrix.h5   (or raw_feature_bc_matrix.h5)
      spatial/tissue_positions.csv                  (SR >= 2, header)  or  tissue_positions_list.csv (SR 1.x)
      spatial/scalefactors_json.json
      spatial/tissue_hires_image.png  spatial/tissue_lowres_image.png
      <library_id>_tissue_image.tif|.btf|.jpg        (optional full-resolution microscope image)

Elements, named as the reference reader names them (``<id>`` is the dataset id):

* shapes ``<id>``: one circle per spot of the matrix, centred on (``pxl_col_in_fullres``, ``pxl_row_in_fullres``)
  with radius ``spot_diameter_fullres / 2``, index ``spot_id`` = 0..n-1 in table order;
* table ``table``: the matrix with obs ``in_tissue``, ``array_row``, ``array_col``, ``spot_id`` (instance key),
  ``region`` (= ``<id>``), ``obsm["spatial"]`` = (x, y) full-resolution pixels and
  ``uns["spatial"][<id>]`` = {"metadata": chemistry/software version, "scalefactors": the JSON};
* images ``<id>_hires_image``, ``<id>_lowres_image`` and ``<id>_full_image`` (c, y, x).

Coordinate systems: ``<id>`` is full-resolution pixels (spots Identity, hires image ``Scale(1 / hires_scalef)``,
lowres image ``Scale(1 / lowres_scalef)``, full image Identity); ``<id>_downscaled_hires`` is hires pixels (spots
``Scale(hires_scalef)``, hires image Identity) and ``<id>_downscaled_lowres`` likewise for lowres.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.elements import Image2DModel, ShapesModel, TableModel, check_name, sanitize_name
from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect
from tissuestack.io._tenx_h5 import read_10x_h5, tenx_h5_attributes
from tissuestack.io._tiff import tiff_metadata, tiff_to_element
from tissuestack.transforms import BaseTransformation, Identity, Scale

__all__ = ["TECHNOLOGY", "iter_visium", "visium"]

FILTERED_COUNTS_FILE = "filtered_feature_bc_matrix.h5"
RAW_COUNTS_FILE = "raw_feature_bc_matrix.h5"
SPOTS_FILE_1 = "tissue_positions_list.csv"  # Space Ranger 1.x
SPOTS_FILE_2 = "tissue_positions.csv"  # Space Ranger >= 2.0
SCALEFACTORS_FILE = "scalefactors_json.json"
IMAGE_HIRES_FILE = "tissue_hires_image.png"
IMAGE_LOWRES_FILE = "tissue_lowres_image.png"
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
FULLRES_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")
TABLE_NAME = "table"
REGION_KEY = "region"
INSTANCE_KEY = "spot_id"
HIRES_KEY = "tissue_hires_scalef"
LOWRES_KEY = "tissue_lowres_scalef"
SPOT_DIAMETER_KEY = "spot_diameter_fullres"


# ------------------------------------------------------------------------------------------------------------
# helpers shared with the Visium HD reader
# ------------------------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``ReaderError`` naming the file when it is missing or malformed."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ReaderError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as err:
        raise ReaderError(f"{path}: cannot read {what} (expected a JSON object): {err}") from err
    if not isinstance(data, dict):
        raise ReaderError(f"{path}: {what} holds a JSON {type(data).__name__}, expected an object")
    return data


def scale_factor(scalefactors: Mapping[str, Any], key: str, path: Path) -> float | None:
    """A positive finite number from the scale factors, ``None`` when absent; ``ReaderError`` when malformed."""
    if key not in scalefactors:
        return None
    value = scalefactors[key]
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ReaderError(f"{path}: {key!r} is {value!r}; expected a positive number")
    return float(value)


def downscaled_transformations(
    dataset_id: str, hires: float | None, lowres: float | None
) -> dict[str, BaseTransformation]:
    """Transformations of an element in full-resolution pixels to the three Visium coordinate systems."""
    out: dict[str, BaseTransformation] = {dataset_id: Identity()}
    if hires is not None:
        out[f"{dataset_id}_downscaled_hires"] = Scale([hires, hires], axes=("x", "y"))
    if lowres is not None:
        out[f"{dataset_id}_downscaled_lowres"] = Scale([lowres, lowres], axes=("x", "y"))
    return out


def read_counts(path: Path, *, gex_only: bool = False) -> Any:
    """The 10x HDF5 matrix at ``path`` as AnnData (feature names made unique, obs names unique); ``ReaderError``
    naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise ReaderError(f"{path}: 10x feature-barcode matrix (HDF5) not found")
    try:
        adata = read_10x_h5(path, feature_types=["Gene Expression"] if gex_only else None)
    except ReaderError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError on truncated or foreign files
        raise ReaderError(
            f"{path}: cannot read the 10x feature-barcode matrix (expected an HDF5 file with a /matrix group): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not adata.obs_names.is_unique:  # joins and instance ids need unique barcodes
        adata.obs_names_make_unique()
    return adata


def h5_root_metadata(path: Path) -> dict[str, str]:
    """``chemistry_description`` and ``software_version`` root attributes of a 10x HDF5 file."""
    attrs = tenx_h5_attributes(path)
    return {k: str(attrs[k]) for k in ("chemistry_description", "software_version") if k in attrs}


def h5_library_id(path: Path) -> str | None:
    """First entry of the ``library_ids`` root attribute of a 10x HDF5 file, if any."""
    ids = tenx_h5_attributes(path).get("library_ids")
    if isinstance(ids, str):
        return ids or None
    if ids is None or len(ids) == 0:
        return None
    return str(ids[0])


_PIL_MODES: dict[str, tuple[int, str]] = {
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "L": (1, "uint8"),
    "LA": (2, "uint8"),
    "I;16": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
}


@contextlib.contextmanager
def _no_pixel_limit() -> Iterator[None]:
    """Lift PIL's decompression-bomb guard (full-resolution scans exceed it) for the duration of a read."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _decode_pil(path: str, mode: str) -> np.ndarray:
    from PIL import Image

    with _no_pixel_limit(), Image.open(path) as im:
        if im.mode != mode:
            im = im.convert(mode)
        arr = np.asarray(im)
    return arr[:, :, None] if arr.ndim == 2 else arr


def pil_image_array(path: Path) -> tuple[Any, tuple[str, str, str]]:
    """A lazy dask array ``(y, x, c)`` over a PNG/JPEG file, decoded on first compute.

    The header is read and the file is checked (PNG chunk checksums) now, so that a truncated file fails here
    with a ``ReaderError`` naming it.
    """
    import dask
    import dask.array as da
    from PIL import Image, UnidentifiedImageError

    try:
        with _no_pixel_limit(), Image.open(path) as im:
            width, height = im.size
            mode = im.mode
            im.verify()
    except FileNotFoundError:
        raise ReaderError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ReaderError(f"{path}: cannot read the image (expected a PNG or JPEG file): {err}") from err
    if mode not in _PIL_MODES:
        mode = "RGBA" if "A" in mode else "RGB"  # palette and other modes are converted on decode
    channels, dtype = _PIL_MODES[mode]
    data = da.from_delayed(
        dask.delayed(_decode_pil, pure=True)(str(path), mode), shape=(height, width, channels), dtype=dtype
    )
    return data, ("y", "x", "c")


def png_element(
    path: Path, transformations: Mapping[str, BaseTransformation], name: str, scale_factors: Any = None
) -> Any:
    """An image element (c, y, x) over a PNG/JPEG file, lazy."""
    data, dims = pil_image_array(path)
    try:
        return Image2DModel.parse(
            data, dims=dims, transformations=dict(transformations), scale_factors=scale_factors, name=name
        )
    except ValidationError as err:
        raise ReaderError(f"{path}: {err}") from err


def pyramid_factors(height: int, width: int, smallest: int = 512) -> tuple[int, ...] | None:
    """Halvings until the longest side of the last level is at most ``smallest`` pixels (``None``: no pyramid)."""
    longest = max(height, width)
    n = 0
    while longest > smallest and n < 16:
        longest //= 2
        n += 1
    return (2,) * n if n else None


def fullres_element(
    path: Path, transformations: Mapping[str, BaseTransformation], name: str, *, pyramid: bool = True
) -> Any:
    """The full-resolution microscope image (TIFF/BigTIFF through the TIFF helper, PNG/JPEG through PIL), lazy,
    with (``pyramid``) a pyramid of halvings down to ~512 px."""
    if not path.is_file():
        raise ReaderError(f"{path}: full-resolution image not found")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".btf"):
        try:
            meta = tiff_metadata(path)
            axes = meta.axes.upper()
            shape = dict(zip(axes, meta.shape, strict=False))
            factors = pyramid_factors(shape.get("Y", 1), shape.get("X", 1)) if pyramid else None
            return tiff_to_element(
                path, kind="image", transformations=dict(transformations), scale_factors=factors, name=name
            )
        except ReaderError:
            raise
        except Exception as err:  # tifffile raises TiffFileError/ValueError/OSError on malformed files
            raise ReaderError(
                f"{path}: cannot read the full-resolution image (expected a TIFF/BigTIFF): {err}"
            ) from err
    if suffix in (".png", ".jpg", ".jpeg"):
        data, dims = pil_image_array(path)
        factors = pyramid_factors(data.shape[0], data.shape[1]) if pyramid else None
        return Image2DModel.parse(
            data, dims=dims, transformations=dict(transformations), scale_factors=factors, name=name
        )
    raise ReaderError(
        f"{path}: unsupported full-resolution image type {path.suffix!r}; expected one of "
        f"{', '.join(FULLRES_SUFFIXES)}"
    )


def resolve_file(path: Path, file: str | Path) -> Path:
    """``file`` relative to ``path`` unless absolute."""
    file = Path(file)
    return file if file.is_absolute() else path / file


# ------------------------------------------------------------------------------------------------------------
# Visium
# ------------------------------------------------------------------------------------------------------------


def _find_counts(path: Path, counts_file: str, dataset_id: str | None) -> tuple[Path, str | None]:
    """The counts file and the library id its name carries (``None`` for an unprefixed name)."""
    suffixes = (f"_{FILTERED_COUNTS_FILE}", f"_{RAW_COUNTS_FILE}", f"_{counts_file}")
    direct = resolve_file(path, counts_file)
    if dataset_id is not None and (path / f"{dataset_id}_{counts_file}").is_file():
        return path / f"{dataset_id}_{counts_file}", dataset_id
    if direct.is_file():
        name = direct.name
        for suffix in suffixes:
            if name.endswith(suffix) and len(name) > len(suffix):
                return direct, name[: -len(suffix)]
        return direct, None
    candidates = sorted(p for p in path.glob(f"*_{counts_file}") if p.is_file())
    if len(candidates) == 1:
        return candidates[0], candidates[0].name[: -len(f"_{counts_file}")]
    if len(candidates) > 1:
        raise ReaderError(
            f"{path}: several counts files match '(<library_id>_){counts_file}': "
            f"{', '.join(p.name for p in candidates)}; pass dataset_id (or counts_file) to choose one"
        )
    raise ReaderError(
        f"{path}: no counts file '(<library_id>_){counts_file}' found; expected a Space Ranger outs/ folder "
        "(pass counts_file if the matrix was renamed)"
    )


def _find_positions(path: Path, tissue_positions_file: str | Path | None) -> Path:
    if tissue_positions_file is not None:
        file = resolve_file(path, tissue_positions_file)
        if not file.is_file():
            raise ReaderError(f"{file}: tissue positions file not found")
        return file
    for name in (SPOTS_FILE_1, SPOTS_FILE_2):
        if (path / "spatial" / name).is_file():
            return path / "spatial" / name
    raise ReaderError(
        f"{path / 'spatial'}: no spot positions file; expected {SPOTS_FILE_2} (Space Ranger >= 2.0) or "
        f"{SPOTS_FILE_1} (Space Ranger 1.x)"
    )


def read_positions(file: Path) -> pd.DataFrame:
    """The spot positions CSV with the six standard columns, with or without a header row (sniffed: SR 1.x files
    usually have none, some do)."""
    try:
        with open(file, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError as err:
        raise ReaderError(f"{file}: cannot read the tissue positions: {err}") from err
    if not first.strip():
        raise ReaderError(f"{file}: the tissue positions file is empty; expected one row per spot")
    has_header = "in_tissue" in first
    try:
        table = pd.read_csv(
            file, header=0 if has_header else None, dtype={0: str} if not has_header else None
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise ReaderError(f"{file}: cannot parse the tissue positions CSV: {err}") from err
    if has_header:
        table.columns = [str(c).strip() for c in table.columns]
        if "barcode" not in table.columns and table.columns[0] not in POSITION_COLUMNS:
            table = table.rename(columns={table.columns[0]: "barcode"})
        missing = [c for c in POSITION_COLUMNS if c not in table.columns]
        if missing:
            raise ReaderError(
                f"{file}: tissue positions lack the column(s) {', '.join(missing)}; expected the columns "
                f"{', '.join(POSITION_COLUMNS)}"
            )
        table = table[list(POSITION_COLUMNS)]
    else:
        if table.shape[1] != len(POSITION_COLUMNS):
            raise ReaderError(
                f"{file}: tissue positions without a header have {table.shape[1]} columns; expected "
                f"{len(POSITION_COLUMNS)}: {', '.join(POSITION_COLUMNS)}"
            )
        table.columns = list(POSITION_COLUMNS)
    table["barcode"] = table["barcode"].astype(str)
    for column in POSITION_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise ReaderError(
                f"{file}: tissue positions column {column!r} is not numeric (dtype {table[column].dtype}); "
                "expected numbers"
            )
    if not table["barcode"].is_unique:
        dup = table["barcode"][table["barcode"].duplicated()].unique()[:5].tolist()
        raise ReaderError(f"{file}: barcodes are repeated ({', '.join(dup)}); expected one row per spot")
    return table


def join_positions(adata: Any, positions: pd.DataFrame, file: Path, counts: Path) -> np.ndarray:
    """Row of ``positions`` (a frame with a unique ``barcode`` column) of every table row; ``ReaderError`` when
    a barcode of the matrix has no position."""
    rows = pd.Index(positions["barcode"]).get_indexer(adata.obs_names)
    missing = rows < 0
    if missing.any():
        shown = ", ".join(adata.obs_names[missing][:5].tolist())
        raise ReaderError(
            f"{file}: {int(missing.sum())} of the {adata.n_obs} barcodes of {counts.name} have no position "
            f"(first: {shown}); expected every matrix barcode in the positions file"
        )
    return rows


def _find_fullres(path: Path, library_id: str | None, dataset_id: str) -> Path | None:
    """The conventional full-resolution image next to the counts file: ``<id>_tissue_image.*`` or ``<id>_image.*``."""
    stems = []
    for lid in dict.fromkeys(x for x in (library_id, dataset_id) if x):
        stems += [f"{lid}_tissue_image", f"{lid}_image"]
    for stem in stems:
        for suffix in FULLRES_SUFFIXES:
            if (path / f"{stem}{suffix}").is_file():
                return path / f"{stem}{suffix}"
    return None


@with_folder_hints('visium')
def iter_visium(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    counts_file: str = FILTERED_COUNTS_FILE,
    fullres_image_file: str | Path | None = None,
    tissue_positions_file: str | Path | None = None,
    scalefactors_file: str | Path | None = None,
    load_images: bool = True,
    gex_only: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a Visium Space Ranger ``outs/`` folder: the spots, their table, then the images.

    Parameters are those of :func:`visium`. Every file is located and checked before the first element is
    yielded, so a malformed folder fails before anything is written.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a Visium Space Ranger outs/ folder")
    counts_path, library_id = _find_counts(path, counts_file, dataset_id)
    positions_path = _find_positions(path, tissue_positions_file)
    sf_path = (
        resolve_file(path, scalefactors_file) if scalefactors_file else path / "spatial" / SCALEFACTORS_FILE
    )
    scalefactors = read_json(sf_path, "Visium scale factors")
    diameter = scale_factor(scalefactors, SPOT_DIAMETER_KEY, sf_path)
    if diameter is None:
        raise ReaderError(
            f"{sf_path}: no {SPOT_DIAMETER_KEY!r}; expected the spot diameter in full-resolution pixels"
        )
    hires = scale_factor(scalefactors, HIRES_KEY, sf_path)
    lowres = scale_factor(scalefactors, LOWRES_KEY, sf_path)

    if dataset_id is None:
        dataset_id = library_id or h5_library_id(counts_path)
        if not dataset_id:
            raise ReaderError(
                f"{counts_path}: cannot infer the dataset id (the file name has no '<library_id>_' prefix and the "
                "file no 'library_ids' attribute); pass dataset_id"
            )
        dataset_id = sanitize_name(dataset_id)
    elif library_id is not None and library_id != dataset_id:
        warnings.warn(
            f"dataset_id {dataset_id!r} differs from the library id {library_id!r} of {counts_path.name}; "
            f"naming the elements {dataset_id!r}",
            UserWarning,
            stacklevel=2,
        )

    try:
        check_name(dataset_id, "dataset_id")
    except ValidationError as err:
        raise ReaderError(str(err)) from None

    images: list[tuple[str, Path, dict[str, BaseTransformation]]] = []
    if load_images:
        if fullres_image_file is not None:
            full = resolve_file(path, fullres_image_file)
            if not full.is_file():
                raise ReaderError(f"{full}: full-resolution image not found (fullres_image_file)")
        else:
            full = _find_fullres(path, library_id, dataset_id)
        for file, suffix, sf, cs in (
            (path / "spatial" / IMAGE_HIRES_FILE, "_hires_image", hires, "_downscaled_hires"),
            (path / "spatial" / IMAGE_LOWRES_FILE, "_lowres_image", lowres, "_downscaled_lowres"),
        ):
            if not file.is_file():
                continue
            if sf is None:
                key = HIRES_KEY if cs == "_downscaled_hires" else LOWRES_KEY
                raise ReaderError(f"{sf_path}: no {key!r}, needed to place {file.name}")
            images.append(
                (
                    f"{dataset_id}{suffix}",
                    file,
                    {f"{dataset_id}{cs}": Identity(), dataset_id: Scale([1 / sf, 1 / sf], axes=("x", "y"))},
                )
            )
        if full is not None:
            images.append((f"{dataset_id}_full_image", full, {dataset_id: Identity()}))

    positions = read_positions(positions_path)
    adata = read_counts(counts_path, gex_only=gex_only)
    rows = join_positions(adata, positions, positions_path, counts_path)

    x = positions["pxl_col_in_fullres"].to_numpy()[rows]
    y = positions["pxl_row_in_fullres"].to_numpy()[rows]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ReaderError(f"{positions_path}: some matched spots have no pixel coordinates; expected numbers")
    obs = adata.obs
    for column in ("in_tissue", "array_row", "array_col"):
        obs[column] = positions[column].to_numpy()[rows]
    obs[INSTANCE_KEY] = np.arange(adata.n_obs, dtype=np.int64)
    adata.obsm["spatial"] = np.column_stack([x, y])
    adata.uns["spatial"] = {
        dataset_id: {"metadata": h5_root_metadata(counts_path), "scalefactors": dict(scalefactors)}
    }

    transformations = downscaled_transformations(dataset_id, hires, lowres)
    circles = ShapesModel.parse(
        np.column_stack([x, y]).astype(np.float64),
        radius=diameter / 2.0,
        index=pd.Index(obs[INSTANCE_KEY].to_numpy(), name=None),
        transformations=transformations,
        name=dataset_id,
    )
    yield dataset_id, circles
    table = TableModel.parse(
        adata, region=dataset_id, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=TABLE_NAME
    )
    yield TABLE_NAME, table

    for name, file, image_transformations in images:
        if name.endswith("_full_image"):
            yield name, fullres_element(file, image_transformations, name)
        else:
            yield name, png_element(file, image_transformations, name)


def visium(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    counts_file: str = FILTERED_COUNTS_FILE,
    fullres_image_file: str | Path | None = None,
    tissue_positions_file: str | Path | None = None,
    scalefactors_file: str | Path | None = None,
    load_images: bool = True,
    gex_only: bool = False,
):
    """Read a 10x Genomics Visium Space Ranger ``outs/`` folder (Space Ranger 1.x to 4.x).

    Parameters
    ----------
    path
        The ``outs/`` folder (counts HDF5 next to a ``spatial/`` folder).
    dataset_id
        Names the elements (``<id>``, ``<id>_hires_image``, ...) and coordinate systems. Default: the
        ``<library_id>_`` prefix of the counts file (public downloads), else the ``library_ids`` attribute of
        the HDF5 file (sanitized).
    counts_file
        ``filtered_feature_bc_matrix.h5`` (default; the in-tissue spots) or ``raw_feature_bc_matrix.h5`` (every
        spot), with or without the ``<library_id>_`` prefix, or the name of a renamed matrix.
    fullres_image_file
        The full-resolution microscope image Space Ranger was given (``.tif``, ``.btf``, ``.jpg``, ``.png``),
        relative to ``path`` or absolute. Default: ``<library_id>_tissue_image.*`` or ``<library_id>_image.*``
        next to the counts file, when present.
    tissue_positions_file, scalefactors_file
        Renamed positions / scale factors files (relative to ``path``). Default: ``spatial/tissue_positions_list.csv``
        (SR 1.x) or ``spatial/tissue_positions.csv`` (SR >= 2.0); ``spatial/scalefactors_json.json``.
    load_images
        Read the hires, lowres and full-resolution images (lazily).
    gex_only
        Keep only ``Gene Expression`` features.

    Returns
    -------
    SpatialData
        Shapes ``<id>`` (circles, full-resolution pixels), table ``table`` annotating them through ``spot_id``,
        and images ``<id>_hires_image``, ``<id>_lowres_image``, ``<id>_full_image``; coordinate systems ``<id>``
        (full-resolution pixels), ``<id>_downscaled_hires`` and ``<id>_downscaled_lowres``.

    Raises
    ------
    ReaderError
        A file is missing, malformed or truncated, a column is missing, or the dataset id cannot be inferred; the
        message names the file and what was expected.
    """
    return collect(
        iter_visium(
            path,
            dataset_id=dataset_id,
            counts_file=counts_file,
            fullres_image_file=fullres_image_file,
            tissue_positions_file=tissue_positions_file,
            scalefactors_file=scalefactors_file,
            load_images=load_images,
            gex_only=gex_only,
        )
    )


TECHNOLOGY = Technology(
    name="visium",
    summary="10x Genomics Visium (Space Ranger 1.x-4.x outs/): spots as circles, counts table, hires/lowres/"
    "full-resolution images",
    iter_elements=iter_visium,
    options=(
        Option("dataset_id", str, None, "names the elements; default: the counts file prefix or library id"),
        Option(
            "counts_file",
            str,
            FILTERED_COUNTS_FILE,
            "counts HDF5 (filtered or raw, without the <library_id>_ prefix)",
        ),
        Option(
            "fullres_image_file", str, None, "full-resolution image (default: <library_id>_tissue_image.*)"
        ),
        Option("tissue_positions_file", str, None, "renamed spot positions CSV, relative to the folder"),
        Option("scalefactors_file", str, None, "renamed scale factors JSON, relative to the folder"),
        Option("load_images", bool, True, "read the hires, lowres and full-resolution images"),
        Option("gex_only", bool, False, "keep only Gene Expression features"),
    ),
)
