"""A real GCS-compatible server for the object-storage tests: gcp-storage-emulator on 127.0.0.1 (a free
port, in memory), reached by every client the standard way (STORAGE_EMULATOR_HOST for gcsfs and
google-cloud-storage, TENSORSTORE_GCS_HTTP_URL for tensorstore under orbax).

One server per test process, started on first use and stopped when the process exits: a data iterator's
read-ahead threads may still be finishing a read after its test ends, and against a stopped server each
such read would retry for half a minute. Each test module uses a bucket of its own.

One gap of the emulator is filled: GCS sends an object's generation in the `x-goog-generation` header
of every media download, and tensorstore's gcs driver reads it there (OCDBT, orbax's checkpoint format,
rereads its manifest on the condition "generation has changed"); the emulator sends none, so run as a
script (`python gcs_emulator.py PORT`) this file starts the emulator with that header added.
"""
import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import portpicker

_SERVER = {}  # "url", "proc" of this process's server


def client_env(url: str) -> dict:
    """The variables that send every GCS client of a process to the server at `url`. gcsfs's probe of a
    bucket's type asks Google's storage-control API, which no emulator serves: it is switched off."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@contextlib.contextmanager
def running(bucket: str):
    """Yields the server's URL with `bucket` created; this process's environment points at it meanwhile."""
    url = _server()
    _create_bucket(url, bucket)
    saved = {key: os.environ.get(key) for key in client_env(url)}
    os.environ.update(client_env(url))
    _forget_clients()
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_clients()


def _server(timeout: float = 60.0) -> str:
    if "url" not in _SERVER:
        port = portpicker.pick_unused_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(_stop, proc)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gcp-storage-emulator did not serve {url} within {timeout} s") from None
                time.sleep(0.1)
        _SERVER.update(url=url, proc=proc)
    return _SERVER["url"]


def _create_bucket(url: str, bucket: str) -> None:
    request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: it exists already
            raise


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _forget_clients() -> None:
    """Drops the GCS clients this process made: each read the server's address when it was made, and fsspec
    and etils keep them for reuse, so a client of an earlier address would outlive it."""
    import gcsfs
    from etils.epath import backend
    gcsfs.GCSFileSystem.clear_instance_cache()
    type(backend.fsspec_backend)._get_filesystem.cache_clear()


def _serve(port: int) -> None:
    """The emulator in memory on 127.0.0.1:port, its downloads carrying x-goog-generation."""
    from gcp_storage_emulator.handlers import objects
    emulator_download = objects.download

    def download(request, response, storage, *args, **kwargs):
        emulator_download(request, response, storage, *args, **kwargs)
        if response.status.value in (200, 206):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    objects.download = download  # before the server module builds its routes from it
    from gcp_storage_emulator.server import create_server
    logging.disable(logging.CRITICAL)
    create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
