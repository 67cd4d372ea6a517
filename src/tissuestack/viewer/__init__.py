"""The interactive viewer and annotator in the browser (``tissuestack view``, :func:`view`).

Rendering happens on the server (:mod:`tissuestack.viewer._engine`): the browser receives a picture of the
region in view, so whole slides with millions of points and hundreds of thousands of shapes stay responsive.
Needs the optional ``viewer`` extra (bokeh): ``pip install "tissuestack[viewer]"``.
"""

from tissuestack.viewer._annotations import Annotations, load_annotations, save_annotations
from tissuestack.viewer._server import Viewer, view

__all__ = ["Annotations", "Viewer", "load_annotations", "save_annotations", "view"]
