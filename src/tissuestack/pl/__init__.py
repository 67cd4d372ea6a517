"""Static plotting: ``sdata.pl.render_images(...).pl.render_shapes(...).pl.show()``.

Needs the optional dependencies matplotlib and datashader (``pip install "tissuestack[plot]"``); they are imported
when something is drawn, never when tissuestack (or this module) is imported.
"""

from tissuestack.pl._accessor import PlotAccessor
from tissuestack.pl._render import DATASHADER_THRESHOLD

__all__ = ["DATASHADER_THRESHOLD", "PlotAccessor"]
