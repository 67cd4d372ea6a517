"""Arrow's memory pool: jemalloc once the store layer is imported, unless the user chose one."""

import os
import subprocess
import sys

import pyarrow as pa
import pytest

CODE = "import pyarrow as pa, tissuestack.store; print(pa.default_memory_pool().backend_name)"
PLAIN = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"


def _backend(code: str = CODE, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "TISSUESTACK_ARROW_POOL")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_store_layer_uses_jemalloc_unless_told_otherwise():
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc: the pool is left alone (nothing to check)")
    assert _backend() == "jemalloc"
    assert _backend(TISSUESTACK_ARROW_POOL="keep") == _backend(PLAIN)  # pyarrow's own default
    assert _backend(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
