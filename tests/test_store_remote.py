"""Remote stores through real local servers: an HTTP server on loopback (read) and an S3 API (moto) server."""

import functools
import http.server
import io
import os
import threading

import numpy as np
import pytest

from tissuestack import datasets, read_zarr
from tissuestack.elements import raster_levels

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extras")
pytest.importorskip("s3fs", reason="s3fs is in the test extras")
pytest.importorskip("aiohttp", reason="aiohttp is in the test extras (fsspec HTTP)")


@pytest.fixture(scope="module")
def sdata():
    return datasets.synthetic(n_cells=40, n_transcripts=2_000, n_genes=6, image_size=48, seed=2)


def _check(original, back):
    assert set(back) == set(original)
    np.testing.assert_array_equal(
        raster_levels(back["morphology"])[0].values, raster_levels(original["morphology"])[0].values
    )
    a = original["transcripts"].compute().sort_index()
    b = back["transcripts"].compute().sort_index()
    np.testing.assert_allclose(a[["x", "y", "z"]].to_numpy(), b[["x", "y", "z"]].to_numpy())
    assert list(back["spots"].index) == list(original["spots"].index)
    assert back["table"].shape == original["table"].shape


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server with HTTP byte ranges, as nginx, S3 or GCS serve them (http.server has none)."""

    def log_message(self, *args):  # keep test output clean
        pass

    def send_head(self):
        spec = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not spec or not spec.startswith("bytes=") or os.path.isdir(path):
            return super().send_head()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        start_s, _, end_s = spec[len("bytes=") :].partition("-")
        if start_s:
            start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
        else:  # suffix range: the last N bytes
            start, end = max(size - int(end_s), 0), size - 1
        if start >= size:
            f.close()
            self.send_error(416, "Requested range not satisfiable")
            return None
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(f, end - start + 1)


class _Limited(io.RawIOBase):
    """A file object that yields at most ``n`` bytes (the requested range)."""

    def __init__(self, f, n):
        self._f, self._left = f, n

    def read(self, size=-1):
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._f.read(size)
        self._left -= len(data)
        return data

    def close(self):
        self._f.close()
        super().close()


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_read_over_http(sdata, http_root, zarr_format):
    folder, url = http_root
    sdata.write(folder / "s.zarr", zarr_format=zarr_format)
    back = read_zarr(f"{url}/s.zarr")
    _check(sdata, back)
    assert back.path == f"{url}/s.zarr"


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="bucket")
    try:
        yield options
    finally:
        server.stop()


def test_write_and_read_s3(sdata, s3):
    sdata.write("s3://bucket/s.zarr", storage_options=s3)
    back = read_zarr("s3://bucket/s.zarr", storage_options=s3)
    _check(sdata, back)
    # overwrite is a swap, and an element can be added and deleted in place
    small = sdata.subset(["spots", "nuclei"])
    small.write("s3://bucket/s.zarr", storage_options=s3, overwrite=True)
    small["labels_copy"] = sdata["cell_labels"]
    small.write_element("labels_copy")
    assert set(read_zarr("s3://bucket/s.zarr", storage_options=s3)) == {"spots", "nuclei", "labels_copy"}
    small.delete_element("nuclei")
    assert set(read_zarr("s3://bucket/s.zarr", storage_options=s3)) == {"spots", "labels_copy"}
