"""One path layer for every file the project reads or writes: local paths and object-store URLs
(`gs://bucket/...`, `s3://...`) go through the same functions, backed by etils.epath (fsspec / gcsfs
underneath, as orbax's own checkpoint I/O is).

Paths stay strings everywhere (config values, run directories, data files); these functions are the
only place that tells a URL from a local path. Local paths behave exactly as `os` treats them.

* `absolute` makes a local path absolute and leaves a URL alone (`os.path.abspath("gs://b/x")` would
  turn the URL into a local folder `<cwd>/gs:/b/x`).
* `write` / `writer` replace a file whole: locally through a temporary file and `os.replace`, in an
  object store as one upload (an object becomes visible whole or not at all), so no reader ever sees
  half a file, and a crash while writing leaves the previous file.
* Object-store listings are never cached: another process (a worker of the same run, the resumed run,
  an evaluation) may have written since, and gcsfs's default listing cache would not see it.
* `check_bucket` turns a missing bucket or an unreachable server into one line naming the path and the
  cause, for the launch scripts to say before they build anything.

Clients find a GCS emulator the standard way: `STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage)
and `TENSORSTORE_GCS_HTTP_URL` (tensorstore, under orbax).
"""
from __future__ import annotations

import contextlib
import glob as glob_lib
import io
import json
import os
import posixpath
import re
import socket
import tempfile
import urllib.parse
import uuid
from typing import IO, Any, Iterable, Iterator, Optional, Union

import fsspec
from etils import epath

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
for _protocol in ("gs", "s3"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_url(path: Union[str, os.PathLike]) -> bool:
    """Whether `path` is an object-store URL (scheme://...) rather than a local path."""
    return bool(_URL.match(os.fspath(path)))


def absolute(path: Union[str, os.PathLike]) -> str:
    """A local path made absolute (and normalised), a URL without a trailing slash."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def join(path: Union[str, os.PathLike], *names: str) -> str:
    path = os.fspath(path)
    return posixpath.join(path, *names) if is_url(path) else os.path.join(path, *names)


def dirname(path: Union[str, os.PathLike]) -> str:
    path = os.fspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def basename(path: Union[str, os.PathLike]) -> str:
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def as_path(path: Union[str, os.PathLike]) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path) -> bool:
    return as_path(path).exists()


def isdir(path) -> bool:
    return as_path(path).is_dir()


def isfile(path) -> bool:
    return as_path(path).is_file()


def listdir(path) -> list[str]:
    """The names in a directory, sorted."""
    return sorted(p.name for p in as_path(path).iterdir())


def glob(pattern: str) -> list[str]:
    """The paths matching a glob pattern (`*`, `?`, `[...]`), sorted."""
    if is_url(pattern):
        fs, _ = fsspec.core.url_to_fs(pattern)
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))
    return sorted(glob_lib.glob(pattern))


def getsize(path) -> int:
    return as_path(path).stat().length


def makedirs(path) -> None:
    """A directory and its parents (object stores have no directories: nothing to make there)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def remove(path) -> None:
    as_path(path).unlink()


def rmtree(path) -> None:
    as_path(path).rmtree()


def open(path, mode: str = "r", **kwargs) -> IO:  # noqa: A001 (the builtin's name on purpose)
    """A file object; reading an object-store file seeks and reads ranges as a local one does."""
    return as_path(path).open(mode, **kwargs)


def read_bytes(path) -> bytes:
    """A whole file: one request for an object-store file (no metadata request, no read-ahead block)."""
    if is_url(path):
        fs, stripped = fsspec.core.url_to_fs(path)
        return fs.cat_file(stripped)
    return as_path(path).read_bytes()


def read_range(path, offset: int, size: int) -> bytes:
    """`size` bytes of a file from `offset`: one ranged request for an object-store file (opening it as a
    file would read ahead a whole block of several MB), a seek and a read for a local one."""
    offset, size = int(offset), int(size)
    if is_url(path):
        fs, stripped = fsspec.core.url_to_fs(path)
        data = fs.cat_file(stripped, start=offset, end=offset + size)
    else:
        with as_path(path).open("rb") as f:
            f.seek(offset)
            data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path}: read {len(data)} of {size} bytes at offset {offset}")
    return data


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path) -> Any:
    return json.loads(read_text(path))


@contextlib.contextmanager
def writer(path) -> Iterator[IO[bytes]]:
    """A binary file whose contents replace `path` whole when the block ends, and leave it untouched when
    the block raises: written to a temporary file beside it (local) or in the temp folder, then renamed
    into place (fsync'd first) or uploaded as one object."""
    path = os.fspath(path)
    remote = is_url(path)
    directory = tempfile.gettempdir() if remote else os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A unique name beside the target, opened as open() would (mkstemp's files would be private, 0600).
    tmp = os.path.join(directory, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with io.open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if remote:
            fs, stripped = fsspec.core.url_to_fs(path)
            fs.put_file(tmp, stripped)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write(path, data: Union[str, bytes]) -> str:
    """Replaces the file `path` whole with `data` (str as UTF-8); returns `path`."""
    with writer(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return os.fspath(path)


def write_json(path, data, indent=None) -> str:
    return write(path, json.dumps(data, indent=indent))


def write_lines(path, lines: Iterable[str]) -> str:
    return write(path, "".join(lines))


def copy(source, target) -> None:
    write(target, read_bytes(source))


# The servers object-store clients talk to unless the standard variables point them elsewhere.
_ENDPOINTS = {"gs": ("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com"),
              "s3": ("AWS_ENDPOINT_URL", "https://s3.amazonaws.com")}


def check_bucket(path: str, key: str) -> None:
    """ValueError in one line naming `key`, `path` and the cause when `path` is an object-store URL whose
    server cannot be reached or whose bucket does not exist; nothing for local paths.

    The server is tried with one TCP connection first: gcsfs would retry a refused connection for about
    a minute, logging a traceback each time, before it said anything."""
    if not is_url(path):
        return
    scheme, rest = path.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    server = endpoint(scheme)
    if server:
        try:
            socket.create_connection(server, timeout=10).close()
        except OSError as e:
            raise ValueError(f"{key}={path}: cannot reach the storage server {server[0]}:{server[1]} "
                             f"({_one_line(e)})") from None
    try:
        found = epath.Path(bucket).exists()
    except Exception as e:  # gcsfs / aiohttp raise many types for a refused connection or denied access
        raise ValueError(f"{key}={path}: cannot read {bucket} ({type(e).__name__}: {_one_line(e)})") from None
    if not found:
        raise ValueError(f"{key}={path}: bucket {bucket} does not exist (or these credentials cannot see it)")


def endpoint(scheme: str) -> Optional[tuple[str, int]]:
    """(host, port) of the server a `scheme://` URL is read from, or None for a scheme not known here."""
    if scheme not in _ENDPOINTS:
        return None
    variable, default = _ENDPOINTS[scheme]
    url = os.environ.get(variable) or default
    url = url if "://" in url else "http://" + url
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")
