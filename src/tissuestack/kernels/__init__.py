"""Numba / numpy kernels: the hot loops of spatial operations, each a small pure function on numpy arrays.

Kernel modules import numba at module level (so that ``cache=True`` works); import them where they are used,
never from ``import tissuestack``: numba adds about half a second to an import.
"""
