"""Synthetic MACSima (MACSiQ View) processed output folders: single-channel OME-TIFFs, a few tens of KB.

The layout follows ``docs/vendors.md`` §6.8 and §7.8: one uint16 (1, y, x) OME-TIFF per channel whose
ImageDescription is an OME-XML document (Pixels with the physical pixel size, one Channel, one Plane with its
position; StructuredAnnotations/MapAnnotation with the v1 keys, or for ``version=0`` the v0 keys and
``Screen/Reagent@Name = <antigen>__<clone>``; ``Plate/Well@ExternalIdentifier``), written as ASCII with XML
character references (``&#181;m``). Channels (:data:`MACSIMA_CHANNELS`): cycles 1, 1, 2, 15 with scan types S, S,
S, B, plus a DAPI image in every cycle of ``dapi_cycles``. One file carries a SubIFD pyramid, one sits in a
sub-folder (the reader searches recursively) and ``notes/overview.tif`` has no OME-XML (a reader skips it).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

__all__ = ["MACSIMA_CHANNELS", "MACSIMA_PIXEL_SIZE", "write_macsima"]

#: (cycle, marker, clone, fluorochrome, scan type S/B, exposure ms)
MACSIMA_CHANNELS = (
    (1, "CD15", "VIMC6", "APC", "S", 120.0),
    (1, "CD45", "REA747", "PE", "S", 80.0),
    (2, "CD3", "REA613", "FITC", "S", 240.0),
    (15, "CD15", "VIMC6", "APC", "B", 120.0),
)
MACSIMA_PIXEL_SIZE = 0.17  # µm
_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_V0_TYPES = {"S": "AntigenCycle", "B": "BleachCycle"}


def _sub(parent: ET.Element, tag: str, **attrs: object) -> ET.Element:
    return ET.SubElement(parent, f"{{{_NS}}}{tag}", {k: str(v) for k, v in attrs.items() if v is not None})


def _ome_xml(
    *,
    version: int,
    cycle: int,
    marker: str,
    clone: str | None,
    fluor: str,
    scan: str,
    exposure: float,
    shape: tuple[int, int],
    position: tuple[float, float],
    position_unit: str | None,
    pixel_size: tuple[float, str],
    well: str,
    software_version: str | None,
    old_cycle_key: bool,
) -> str:
    ET.register_namespace("", _NS)
    root = ET.Element(f"{{{_NS}}}OME", {"Creator": "MACS iQ View (synthetic)"})
    plate = _sub(root, "Plate", ID="Plate:0", Name="Plate")
    _sub(plate, "Well", ID="Well:0", Column=0, Row=3, ExternalIdentifier=well)
    if version == 0:
        screen = _sub(root, "Screen", ID="Screen:0")
        _sub(screen, "Reagent", ID="Reagent:0", Name=f"{marker}__{clone}" if clone else marker)
    image = _sub(root, "Image", ID="Image:0", Name=f"{marker}_cycle{cycle}")
    size, unit = pixel_size
    pixels = _sub(
        image,
        "Pixels",
        ID="Pixels:0",
        DimensionOrder="XYCZT",
        Type="uint16",
        SizeX=shape[1],
        SizeY=shape[0],
        SizeC=1,
        SizeZ=1,
        SizeT=1,
        PhysicalSizeX=size,
        PhysicalSizeXUnit=unit,
        PhysicalSizeY=size,
        PhysicalSizeYUnit=unit,
    )
    _sub(pixels, "Channel", ID="Channel:0:0", Name=marker, SamplesPerPixel=1)
    _sub(pixels, "TiffData", IFD=0, PlaneCount=1)
    _sub(
        pixels,
        "Plane",
        TheC=0,
        TheT=0,
        TheZ=0,
        PositionX=position[1],
        PositionXUnit=position_unit,
        PositionY=position[0],
        PositionYUnit=position_unit,
    )
    if version == 1:
        keys = {
            "SoftwareVersion": software_version or "1.2.0",
            "Biomarker" if marker != "DAPI" else "Dye": marker,
            "Clone": clone or "",
            "Fluorochrome": fluor if marker != "DAPI" else "",
            "ExposureTime": exposure,
            "Cycle": cycle,
            "RoiId": 1,
            "ScanType": scan,
        }
    else:
        keys = {
            "Software version": software_version or "0.9.2",
            "Fluorochrome": fluor,
            "Exposure time": exposure,
            "MICS cycle ID" if old_cycle_key else "Cycle": cycle,
            "ROI ID": 1,
            "MICS cycle type": _V0_TYPES[scan],
        }
    annotations = _sub(root, "StructuredAnnotations")
    value = _sub(_sub(annotations, "MapAnnotation", ID="Annotation:0"), "Value")
    for key, text in keys.items():
        _sub(value, "M", K=key).text = str(text)
    # a second annotation repeating a key: the first value must win
    value = _sub(_sub(annotations, "MapAnnotation", ID="Annotation:1"), "Value")
    _sub(value, "M", K="Cycle" if version == 1 else "ROI ID").text = "99"
    return ET.tostring(root, encoding="us-ascii", xml_declaration=True).decode("ascii")


def write_macsima(
    path: str | Path,
    *,
    version: int = 1,
    dapi_cycles: tuple[int, ...] = (1,),
    ragged: bool = False,
    position_unit: str | None = None,
    pixel_size_unit: str = "µm",
    software_version: str | None = None,
    old_cycle_key: bool = False,
    height: int = 30,
    width: int = 40,
    seed: int = 0,
) -> Path:
    """Write a synthetic MACSima processed output folder into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    version
        ``1`` (``SoftwareVersion`` keys) or ``0`` (legacy ``Software version`` keys and the Screen reagent name).
    dapi_cycles
        A DAPI (nuclei) image is written for each of these cycles.
    ragged
        Make the cycle-2 image 4 rows and 4 columns larger at Plane position (0, 0), the others at (2, 3):
        a reader pads them into one (height + 4, width + 4) frame.
    position_unit
        ``PositionXUnit`` / ``PositionYUnit`` of the Planes; ``None`` leaves them out (pixels). With a length
        unit (``"µm"``) the positions are written in that unit.
    pixel_size_unit
        ``"µm"`` or ``"nm"`` (the value is scaled to match :data:`MACSIMA_PIXEL_SIZE` µm).
    software_version
        Override the version string (e.g. ``"2.0.0"`` to make an unknown version).
    old_cycle_key
        v0 only: write the cycle as ``MICS cycle ID`` (very old exports) instead of ``Cycle``.
    height, width
        Image size in pixels.
    seed
        Random seed.
    """
    import tifffile

    if version not in (0, 1):
        raise ValueError(f"version must be 0 or 1, got {version!r}")
    rng = np.random.default_rng(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    size = MACSIMA_PIXEL_SIZE * (1000.0 if pixel_size_unit == "nm" else 1.0)
    channels = list(MACSIMA_CHANNELS) + [(c, "DAPI", None, "DAPI", "S", 10.0) for c in dapi_cycles]
    per_um = 1.0 if position_unit is None else MACSIMA_PIXEL_SIZE
    for k, (cycle, marker, clone, fluor, scan, exposure) in enumerate(channels):
        big = ragged and cycle == 2 and marker != "DAPI"
        shape = (height + 4, width + 4) if big else (height, width)
        position = (0.0, 0.0) if big or not ragged else (2 * per_um, 3 * per_um)
        xml = _ome_xml(
            version=version,
            cycle=cycle,
            marker=marker,
            clone=clone,
            fluor=fluor,
            scan=scan,
            exposure=exposure,
            shape=shape,
            position=position,
            position_unit=position_unit,
            pixel_size=(size, pixel_size_unit),
            well="D01",
            software_version=software_version,
            old_cycle_key=old_cycle_key,
        )
        data = rng.integers(0, 60000, size=(1, *shape), dtype=np.uint16)
        if version == 1:
            name = f"CYC-{cycle:03d}_SCN-{k:03d}_ST-{scan}_R-01_W-D01_ROI-001_F-{fluor}_A-{marker}.tif"
        else:
            name = (
                f"C-{cycle:03d}_S-{k:03d}_{scan}_{fluor}_R-01_W-D-1_ROI-01_A-{marker}_C-{clone or 'NA'}.tif"
            )
        folder = out / "cycle_2" if cycle == 2 else out
        folder.mkdir(exist_ok=True)
        pyramid = k == 0
        with tifffile.TiffWriter(folder / name) as tif:
            tif.write(
                data,
                description=xml,
                metadata=None,
                photometric="minisblack",
                subifds=1 if pyramid else 0,
            )
            if pyramid:
                tif.write(data[:, ::2, ::2], metadata=None, photometric="minisblack", subfiletype=1)
    (out / "notes").mkdir(exist_ok=True)
    tifffile.imwrite(out / "notes" / "overview.tif", rng.integers(0, 255, size=(8, 8), dtype=np.uint8))
    return out
