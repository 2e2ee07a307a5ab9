"""An S3-compatible object store, seen through the few operations the lake needs.

Keys are relative to the store's prefix (``s3://bucket/prefix``): ``lake/CURRENT`` is
``s3://bucket/prefix/lake/CURRENT``. Writes that decide who wins (claiming a version name, swapping a pointer) are
conditional: ``create_only`` sends ``If-None-Match: *`` and ``if_etag`` sends ``If-Match``, and a write that loses
raises :class:`PreconditionFailed` having changed nothing. Every S3-compatible server this product targets
(AWS S3 since 2024-11, MinIO and its fork Silo, moto) honours both headers; a store that ignored them would turn
the compare-and-swap into last-writer-wins, so the test suite checks them against a real server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rec_core.settings import PathSettings

# S3 deletes at most this many keys per request.
_DELETE_BATCH = 1000


class StoreError(RuntimeError):
    """The object store refused or failed an operation."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists (``create_only``) or changed (``if_etag``); nothing was written."""


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class StoreLocation:
    bucket: str
    prefix: str  # "" or "a/b" without slashes at either end

    @classmethod
    def parse(cls, uri: str) -> StoreLocation:
        if not uri.startswith("s3://"):
            raise StoreError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"no bucket in {uri!r}")
        return cls(bucket, prefix.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


class ObjectStore(Protocol):
    """What the lake asks of a store; :class:`S3Store` is the one implementation."""

    location: StoreLocation

    def get(self, key: str) -> Blob | None: ...

    def put(self, key: str, data: bytes, *, create_only: bool = False, if_etag: str | None = None) -> str: ...

    def upload(self, key: str, path: Path) -> None: ...

    def download(self, key: str, path: Path) -> None: ...

    def copy(self, source: str, key: str) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def modified(self, key: str) -> float | None: ...

    def delete(self, keys: Iterable[str]) -> None: ...


class S3Store:
    """:class:`ObjectStore` over boto3, for AWS S3 and any server that speaks its API (MinIO, Silo, moto)."""

    def __init__(self, location: StoreLocation, client: Any) -> None:
        self.location = location
        self._client = client

    def get(self, key: str) -> Blob | None:
        try:
            response = self._call("get_object", key)
        except _NotFound:
            return None
        return Blob(response["Body"].read(), response["ETag"])

    def put(self, key: str, data: bytes, *, create_only: bool = False, if_etag: str | None = None) -> str:
        conditions: dict[str, str] = {}
        if create_only:
            conditions["IfNoneMatch"] = "*"
        if if_etag is not None:
            conditions["IfMatch"] = if_etag
        return self._call("put_object", key, Body=data, **conditions)["ETag"]

    def upload(self, key: str, path: Path) -> None:
        self._guard(lambda: self._client.upload_file(str(path), self.location.bucket, self.location.key(key)), key)

    def download(self, key: str, path: Path) -> None:
        self._guard(lambda: self._client.download_file(self.location.bucket, self.location.key(key), str(path)), key)

    def copy(self, source: str, key: str) -> None:
        self._call("copy_object", key, CopySource={"Bucket": self.location.bucket, "Key": self.location.key(source)})

    def modified(self, key: str) -> float | None:
        """When the object was last written (a Unix time), or None when there is none."""
        try:
            return self._call("head_object", key)["LastModified"].timestamp()
        except _NotFound:
            return None

    def keys(self, prefix: str) -> list[str]:
        full = self.location.key(prefix)
        strip = len(self.location.key(""))
        out: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=full)
        for page in self._guard(lambda: list(pages), prefix):
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)

    def delete(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self.location.key(k)} for k in keys]
        for start in range(0, len(batch), _DELETE_BATCH):
            objects = batch[start : start + _DELETE_BATCH]
            self._guard(
                lambda o=objects: self._client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": o, "Quiet": True}
                ),
                "",
            )

    def _call(self, operation: str, key: str, **kwargs: Any) -> Any:
        """``operation`` on ``key`` (relative to the prefix), its errors turned into this module's."""
        client, bucket, full = self._client, self.location.bucket, self.location.key(key)
        return self._guard(lambda: getattr(client, operation)(Bucket=bucket, Key=full, **kwargs), key)

    def _guard(self, action: Any, key: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return action()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise _NotFound(key) from exc
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"{self.location}/{key}: {code}") from exc
            raise StoreError(f"{self.location}/{key}: {code} {error.get('Message', '')}".rstrip()) from exc
        except BotoCoreError as exc:  # no connection, bad endpoint, no credentials
            raise StoreError(f"{self.location}/{key}: {exc}") from exc


class _NotFound(StoreError):
    pass


def open_store(paths: PathSettings) -> S3Store:
    """The store ``REC_DATA_URI`` names, with the endpoint, region and credentials the settings give."""
    import boto3
    from botocore.config import Config

    credentials = (
        {"aws_access_key_id": paths.s3_access_key_id, "aws_secret_access_key": paths.s3_secret_access_key}
        if paths.s3_access_key_id
        else {}
    )
    client = boto3.client(
        "s3",
        endpoint_url=paths.s3_endpoint or None,
        region_name=paths.s3_region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60),
        **credentials,
    )
    return S3Store(StoreLocation.parse(paths.data_uri), client)
