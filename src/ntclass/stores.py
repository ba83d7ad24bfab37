"""Where raw EM lives: a local path, a URL (`gs://`, `s3://`, `http(s)://`) or a source
string copied from a neuroglancer state, read through TensorStore's key-value stores.

Credentials come from the environment the cloud SDKs use, never from the config:
- `gs://`: Google's application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, or
  `gcloud auth application-default login`); public buckets are read anonymously.
- `s3://`: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and `~/.aws/`; an
  S3-compatible server (MinIO, Ceph, a lab's own) by `AWS_ENDPOINT_URL_S3` or
  `AWS_ENDPOINT_URL`, its region by `AWS_REGION`.
- `http(s)://`: none; a server must honour byte ranges for sharded volumes.

A slow or failing server is retried with exponential backoff, `NTCLASS_REMOTE_RETRIES`
times (default 8: about a minute), then the read stops with one sentence naming the URL.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import tensorstore as ts

from ntclass.errors import NtclassError

REMOTE_SCHEMES = ("gs", "s3", "http", "https")
# the formats of a neuroglancer source string, as TensorStore drivers
FORMATS = {"precomputed": "neuroglancer_precomputed", "neuroglancer-precomputed":
           "neuroglancer_precomputed", "zarr": "zarr", "zarr2": "zarr", "zarr3": "zarr3",
           "n5": "n5"}
RETRIES_ENV = "NTCLASS_REMOTE_RETRIES"
_PIPE = re.compile(r"^(?P<url>[^|]+)\|(?P<format>[a-z0-9-]+):(?P<inside>.*)$")
_PREFIX = re.compile(r"^(?P<format>[a-z0-9-]+)://(?P<url>(?:gs|s3|https?|file)://.*)$")


@dataclass(frozen=True)
class RawAddress:
    """A raw container: its location (a local path or a URL) and, where the string named
    one, its format as a TensorStore driver."""

    location: str
    driver: str | None = None

    @property
    def remote(self) -> bool:
        return urlsplit(self.location).scheme in REMOTE_SCHEMES

    @property
    def shown(self) -> str:
        """The location as logs and messages show it (no passwords, no signed tokens)."""
        return redact_url(self.location)

    def kvstore(self, inside: str = "") -> dict | str:
        """The TensorStore key-value store of the folder `inside` this container."""
        base = self.location.rstrip("/")
        inside = inside.strip("/")
        folder = f"{base}/{inside}/" if inside else f"{base}/"
        parts = urlsplit(folder)
        if parts.scheme == "s3" and s3_endpoint():
            return {"driver": "s3", "bucket": parts.netloc, "path": parts.path.lstrip("/"),
                    "endpoint": s3_endpoint(),
                    "aws_region": os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if parts.scheme in REMOTE_SCHEMES:
            return folder
        if parts.scheme == "file":
            return {"driver": "file", "path": parts.path}
        return {"driver": "file", "path": folder}

    def read(self, key: str) -> bytes | None:
        """The bytes stored under `key` (a path inside the container), None if missing."""
        head, _, name = key.strip("/").rpartition("/")
        store = _kvstore(json.dumps(self.kvstore(head), sort_keys=True))
        try:
            result = store.read(name).result()
        except ValueError as e:
            raise unreachable(self.shown, e) from None
        return bytes(result.value) if result.state == "value" else None

    def read_json(self, key: str) -> dict | None:
        raw = self.read(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise NtclassError(f"'{self.shown}/{key}' is not JSON") from None


def parse_container(container: str) -> RawAddress:
    """A raw container as configured: a path, a URL, `precomputed://URL` (any format of
    FORMATS), or neuroglancer's `URL|neuroglancer-precomputed:` pipeline form."""
    text = str(container).strip()
    for pattern in (_PREFIX, _PIPE):
        match = pattern.match(text)
        if match:
            fmt = match["format"]
            if fmt not in FORMATS:
                raise NtclassError(
                    f"raw container '{redact_url(text)}' names the format '{fmt}'; ntclass "
                    f"reads {', '.join(sorted(set(FORMATS) - {'neuroglancer-precomputed'}))}")
            if match.groupdict().get("inside"):
                raise NtclassError(
                    f"raw container '{redact_url(text)}' names a path after '{fmt}:'; put "
                    "the array's path in raw_dataset instead")
            return RawAddress(match["url"], FORMATS[fmt])
    return RawAddress(text)


def is_remote(container: str) -> bool:
    """Whether `container` is read over the network (not a local path)."""
    return parse_container(container).remote


def redact_url(url: str) -> str:
    """`url` with a password or a query string (signed URLs carry tokens there) hidden."""
    parts = urlsplit(url)
    if parts.scheme not in REMOTE_SCHEMES:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + ("?***" if parts.query else "")


def s3_endpoint() -> str | None:
    """An S3-compatible server named the AWS SDKs' way (None: Amazon's own)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def retries() -> int:
    value = os.environ.get(RETRIES_ENV, "8")
    if not value.isdigit():
        raise NtclassError(f"{RETRIES_ENV}={value!r}; expected a whole number of retries")
    return int(value)


def retry_settings() -> dict:
    """Backoff for every remote store: 0.25 s doubling up to 16 s between tries."""
    policy = {"max_retries": max(1, retries()), "initial_delay": "250ms", "max_delay": "16s"}
    return {f"{kind}_request_retries": policy for kind in ("http", "gcs", "s3")}


def context(threads: int = 0, cache_bytes: int = 0) -> ts.Context:
    """A TensorStore context: `threads` decode threads (0: TensorStore's default), a chunk
    cache of `cache_bytes` and the retry policy. The same arguments give the same context
    (and so the same cache) within a process."""
    return _context(threads, cache_bytes, retries())


@lru_cache(maxsize=8)
def _context(threads: int, cache_bytes: int, tries: int) -> ts.Context:
    spec: dict = {"cache_pool": {"total_bytes_limit": cache_bytes}, **retry_settings()}
    if threads:
        spec["data_copy_concurrency"] = {"limit": threads}
        spec["file_io_concurrency"] = {"limit": max(4, 2 * threads)}
    return ts.Context(spec)


def forget_cached() -> None:
    """Drop this process's contexts (and the chunks and metadata their caches hold) and
    key-value stores: the next read sees the stores as they are now."""
    _context.cache_clear()
    _open_kvstore.cache_clear()


def _kvstore(spec: str) -> ts.KvStore:
    return _open_kvstore(spec, context())


@lru_cache(maxsize=64)
def _open_kvstore(spec: str, within: ts.Context) -> ts.KvStore:
    return ts.KvStore.open(json.loads(spec), context=within).result()


def unreachable(shown: str, error: Exception) -> NtclassError:
    """One sentence for a store TensorStore could not read (redacted, without its spec)."""
    reason = str(error).split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
    reason = re.sub(r"(?:gs|s3|https?)://\S+", lambda m: redact_url(m.group(0)), reason)
    if "retry attempts failed" in reason or "CURL error" in reason:
        return NtclassError(f"cannot read raw '{shown}': the server failed {retries()} tries "
                            f"with backoff ({_last_clause(reason)}); check the address and "
                            f"the network, or raise {RETRIES_ENV}")
    return NtclassError(f"cannot read raw '{shown}': {_last_clause(reason)}")


def _last_clause(reason: str) -> str:
    for marker in ("CURL error ", "failed: ", "Error opening "):
        if marker in reason:
            return reason.rsplit(marker, 1)[1].strip().rstrip(".")
    return reason.strip().rstrip(".")
