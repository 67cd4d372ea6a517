"""Static plotting: ``sdata.pl.render_images(...).pl.render_shapes(...).pl.show()``.

Needs the optional dependency matplotlib (``pip install "tissuestack[plot]"``); it is imported
when something is drawn, never when tissuestack (or this module) is imported.
"""

from tissuestack.pl._accessor import PlotAccessor
from tissuestack.pl._render import DATASHADER_THRESHOLD

__all__ = ["DATASHADER_THRESHOLD", "PlotAccessor"]
