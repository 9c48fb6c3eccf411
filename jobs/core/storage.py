"""Object storage behind one small interface: a local folder (file://) or S3 (s3://, boto3).

The S3 flavour takes an endpoint URL from configuration, so the same code writes to AWS S3,
MinIO, or a moto server in tests. Credentials come from the usual AWS environment
variables or instance profile, never from configuration files.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from bundlecast.jobs.core.errors import ConfigError


class LocalStore:
    def __init__(self, root: str):
        self.root = Path(root)

    def uri(self, key: str) -> str:
        return f"file://{self.root / key}"

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def list(self, prefix: str) -> list[str]:
        keys, strip = [], len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_store(target: str, endpoint_url: str | None = None):
    """``file:///abs/path``, a plain path, or ``s3://bucket/prefix``."""
    parsed = urlparse(target)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else target)
    if parsed.scheme in ("s3", "s3a"):
        return S3Store(parsed.netloc, parsed.path, endpoint_url)
    raise ConfigError(f"unsupported export target {target!r}: use file://PATH or s3://BUCKET/PREFIX")
