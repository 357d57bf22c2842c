"""One small storage interface over local paths and ``s3://bucket/prefix`` URIs.

Every pipeline step reads and writes through these functions, so the same code
runs against a laptop folder, MinIO, or any S3-compatible store.

S3 access goes through boto3's standard configuration chain: credentials from
the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), a profile or
an instance role; region from ``AWS_REGION``/``AWS_DEFAULT_REGION``; the
endpoint from ``AWS_ENDPOINT_URL`` (boto3's own variable) or, for MLflow-style
deployments, ``MLFLOW_S3_ENDPOINT_URL``. Retries use botocore's ``adaptive``
mode so throttling (``SlowDown``) and 5xx answers are retried with backoff.

Writes are atomic: a local file is written to a temporary name in the same
folder and renamed into place; an S3 ``PutObject`` is atomic by itself (a
reader sees the old object or the new one, never a part). Permanent failures
(missing bucket, bad credentials, access denied) raise :class:`StorageError`
with the URI and the fix, without retrying.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast
from urllib.parse import urlparse

__all__ = [
    "StorageError",
    "atomic_local_write",
    "check_access",
    "copy",
    "create_exclusive",
    "delete",
    "download_file",
    "exists",
    "is_s3",
    "join",
    "list_uris",
    "open_binary",
    "open_text",
    "read_bytes",
    "read_tagged",
    "read_text",
    "replace_if_tagged",
    "reraise",
    "s3_client",
    "split_s3",
    "upload_file",
    "write_bytes",
    "write_text",
]

# Error codes that no retry can fix: fail fast with a message naming the fix.
_PERMANENT = {
    "NoSuchBucket": "create the bucket or fix the bucket name in the URI",
    "AccessDenied": "grant the pipeline's credentials access to this prefix",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID (Kubernetes secret object-store-credentials)",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY (the secret object-store-credentials)",
    "InvalidBucketName": "fix the bucket name in the URI",
    "AllAccessDisabled": "the bucket is disabled; use another bucket",
}


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the fix.

    Attributes:
        retryable: False for what no retry can fix (missing bucket, refused credentials:
            a user error); True when the store could not be reached (it may come back).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names an S3 object or prefix."""
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises:
        StorageError: if the URI has no bucket.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an s3:// URI. Fix: write it as s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI with ``/``."""
    base = str(base)
    cleaned = [p.strip("/") for p in parts if p and p.strip("/")]
    if not cleaned:
        return base
    if is_s3(base):
        return base.rstrip("/") + "/" + "/".join(cleaned)
    return str(Path(base).joinpath(*cleaned))


_client_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def _endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def s3_client(attempts: int | None = None, timeout_s: float | None = None) -> Any:
    """A boto3 S3 client for the current environment (cached per endpoint and process).

    Args:
        attempts: total attempts per request (default ``FA_S3_MAX_ATTEMPTS`` or 10).
        timeout_s: connect timeout (default 10 s; reads 60 s).

    Returns:
        A ``botocore`` S3 client with adaptive retries and timeouts.
    """
    import boto3
    from botocore.config import Config

    key = (
        os.getpid(),
        _endpoint_url(),
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        attempts,
        timeout_s,
    )
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(
                retries={
                    "max_attempts": attempts or int(os.environ.get("FA_S3_MAX_ATTEMPTS", "10")),
                    "mode": "adaptive",
                },
                connect_timeout=timeout_s or 10,
                read_timeout=timeout_s or 60,
                s3={"addressing_style": "path"} if _endpoint_url() else None,
            )
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=_endpoint_url(),
                region_name=key[3] or "us-east-1",
                config=config,
            )
            _clients[key] = client
        return client


def reraise(uri: str, exc: Exception) -> None:
    """Turn permanent boto errors (and unreachable endpoints) into :class:`StorageError`.

    Re-raises anything else as is; callers follow it with a bare ``raise``.
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        # boto3's upload_file wraps the ClientError (NoSuchBucket, InvalidAccessKeyId, ...)
        # in an error that only quotes it: judge the wrapped one.
        try:
            reraise(uri, exc.__context__)
        except ClientError:
            raise exc from None
    if isinstance(exc, ConnectionError | EndpointConnectionError | ConnectTimeoutError):
        endpoint = _endpoint_url() or "AWS S3 (no AWS_ENDPOINT_URL set)"
        raise StorageError(
            f"{uri}: cannot reach the S3 endpoint {endpoint} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Fix: check AWS_ENDPOINT_URL "
            "(Kubernetes config map object-store-config) and that the object store is up",
            retryable=True,
        ) from exc
    if isinstance(exc, NoCredentialsError):
        raise StorageError(
            f"{uri}: no S3 credentials found. Fix: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (in Kubernetes, from the secret object-store-credentials)"
        ) from exc
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _PERMANENT:
            raise StorageError(f"{uri}: S3 answered {code}. Fix: {_PERMANENT[code]}") from exc
        if code in {"403", "Forbidden"}:
            # A HEAD answer has no body, so S3 gives the bare status: bad credentials
            # and a denied prefix look alike.
            raise StorageError(
                f"{uri}: S3 answered 403 Forbidden (bad credentials or no access). Fix: check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (Kubernetes secret "
                "object-store-credentials) and that they may access this prefix"
            ) from exc
        if code in {"404", "NoSuchKey", "NotFound"}:
            raise FileNotFoundError(f"{uri}: no such object") from exc
    raise exc


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """Read a whole object or file.

    Raises:
        FileNotFoundError: if it does not exist.
        StorageError: on a permanent S3 failure.
    """
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = split_s3(uri)
    try:
        return cast(bytes, s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:
        reraise(uri, exc)
        raise


def read_text(uri: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """Read a whole text file or object."""
    return read_bytes(uri).decode(encoding)


def atomic_local_write(
    path: str | os.PathLike[str],
) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    On an exception (or a killed process) the target is untouched and the
    temporary file is removed (or left with a ``.tmp`` name no reader trusts).
    """
    return _AtomicWriter(Path(path))


def _file_mode() -> int:
    # What open() would give a new file under this process's umask (0644 under the usual 022);
    # mkstemp alone would leave 0600, unreadable to the other users of a shared folder.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


class _AtomicWriter(contextlib.AbstractContextManager[IO[bytes]]):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp: Path | None = None
        self.fh: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self.tmp = Path(tmp)
        os.chmod(fd, _FILE_MODE)
        self.fh = os.fdopen(fd, "wb")
        return self.fh

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.fh is not None and self.tmp is not None
        if exc_type is None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
        else:
            self.fh.close()
            self.tmp.unlink(missing_ok=True)
        return None


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file or object atomically."""
    uri = str(uri)
    if not is_s3(uri):
        with atomic_local_write(uri) as fh:
            fh.write(data)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    except Exception as exc:
        reraise(uri, exc)
        raise


def write_text(uri: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write a whole text file or object atomically."""
    write_bytes(uri, text.encode(encoding))


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether a file or object exists."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    from botocore.exceptions import ClientError

    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchKey", "NotFound"}:
            return False
        reraise(uri, exc)
        raise
    except Exception as exc:
        reraise(uri, exc)
        raise


def check_access(
    uri: str | os.PathLike[str], *, write: bool = False, timeout_s: float = 5.0
) -> None:
    """Fail fast, in seconds, if ``uri`` cannot be read (or, with ``write``, written).

    For S3 one request is made, without retries: an unreachable endpoint, refused
    credentials or a missing bucket are reported at once. ``write`` puts and deletes a
    small probe object under the prefix (a folder: creates it and a probe file).

    Raises:
        StorageError: naming the URI, the endpoint or the credentials, and the fix.
        FileNotFoundError: a local path (or S3 prefix, for reads) that does not exist.
    """
    uri = str(uri)
    if not is_s3(uri):
        path = Path(uri)
        if write:
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe = path / f".fa-write-probe-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise StorageError(
                    f"{uri}: cannot write there ({exc.strerror}). Fix: choose a writable folder"
                ) from exc
        elif not path.exists():
            raise FileNotFoundError(f"{uri}: no such file or folder. Fix: check the path")
        return
    bucket, key = split_s3(uri)
    client = s3_client(attempts=1, timeout_s=timeout_s)
    try:
        if write:
            probe_key = f"{key.rstrip('/')}/.fa-write-probe-{os.getpid()}".lstrip("/")
            client.put_object(Bucket=bucket, Key=probe_key, Body=b"")
            client.delete_object(Bucket=bucket, Key=probe_key)
            return
        found = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except Exception as exc:
        reraise(uri, exc)
        raise
    if not found.get("KeyCount"):
        raise FileNotFoundError(f"{uri}: no such object or prefix. Fix: check the URI")


def list_uris(prefix: str | os.PathLike[str]) -> list[str]:
    """All files (recursively) under a local folder or S3 prefix, as URIs, sorted."""
    prefix = str(prefix)
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.exists():
            return []
        if root.is_file():
            return [str(root)]
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    bucket, key = split_s3(prefix)
    if key and not key.endswith("/"):
        key += "/"
    out: list[str] = []
    try:
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except Exception as exc:
        reraise(prefix, exc)
        raise
    return sorted(out)


def upload_file(local_path: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
    """Copy a local file to ``uri`` (atomic at the destination)."""
    uri = str(uri)
    if not is_s3(uri):
        with atomic_local_write(uri) as fh, open(local_path, "rb") as src:
            shutil.copyfileobj(src, fh, length=1 << 20)
        return
    bucket, key = split_s3(uri)
    try:
        # upload_file uses multipart for large files; S3 only exposes the object
        # once the multipart upload completes, so readers never see a part.
        s3_client().upload_file(str(local_path), bucket, key)
    except Exception as exc:
        reraise(uri, exc)
        raise


def download_file(uri: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
    """Copy ``uri`` to a local file, atomically (a partial download is never visible)."""
    uri = str(uri)
    local_path = Path(local_path)
    if not is_s3(uri):
        with atomic_local_write(local_path) as fh, open(uri, "rb") as src:
            shutil.copyfileobj(src, fh, length=1 << 20)
        return
    bucket, key = split_s3(uri)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local_path.name}.", suffix=".tmp", dir=local_path.parent)
    os.close(fd)
    try:
        s3_client().download_file(bucket, key, tmp)
        os.replace(tmp, local_path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        reraise(uri, exc)
        raise


def copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a file or object to ``dst`` within one store, atomically at the destination.

    Local: a hard link when the file system allows it (no data copied), else a copy.
    S3: a server-side copy (the bytes never pass through this process).
    """
    src, dst = str(src), str(dst)
    if is_s3(src) != is_s3(dst):
        raise StorageError(f"copy {src} -> {dst}: both must be local or both s3://")
    if not is_s3(src):
        target = Path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        return
    (sb, sk), (db, dk) = split_s3(src), split_s3(dst)
    try:
        s3_client().copy({"Bucket": sb, "Key": sk}, db, dk)  # multipart above 8 MB
    except Exception as exc:
        reraise(src, exc)
        raise


def delete(uri: str | os.PathLike[str]) -> None:
    """Delete a file or object; a missing one is not an error."""
    uri = str(uri)
    if not is_s3(uri):
        p = Path(uri)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except Exception as exc:
        reraise(uri, exc)
        raise


@contextlib.contextmanager
def open_binary(uri: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a file or object for streaming reads (S3 objects are not buffered whole)."""
    uri = str(uri)
    if not is_s3(uri):
        with open(uri, "rb") as fh:
            yield fh
        return
    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:
        reraise(uri, exc)
        raise
    try:
        yield body  # botocore StreamingBody: .read(n) streams
    finally:
        body.close()


@contextlib.contextmanager
def open_text(uri: str | os.PathLike[str], encoding: str = "utf-8") -> Iterator[io.TextIOBase]:
    """Open a file or object as a streaming text reader (one line at a time)."""
    uri = str(uri)
    if not is_s3(uri):
        with open(uri, encoding=encoding) as fh:
            yield fh
        return
    with open_binary(uri) as raw:
        text = io.TextIOWrapper(
            io.BufferedReader(_ReadableAdapter(raw), 1 << 20), encoding=encoding
        )
        yield text


class _ReadableAdapter(io.RawIOBase):
    """Adapt botocore's StreamingBody to ``io.RawIOBase`` for TextIOWrapper."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._body.read(len(b))
        n = len(data)
        b[:n] = data
        return n


# --------------------------------------------------------------------------- conditional writes
#
# A lease (fashion_attr.orchestration.lease) needs "create if absent" and "replace only if
# unchanged since I read it". S3 has both as conditional PutObject (If-None-Match: *,
# If-Match: <ETag>; AWS S3 and MinIO honour them); a local folder gets them from O_EXCL and
# an flock held around read-compare-replace.


def _precondition_failed(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {
        409,
        412,
    }


def _local_tag(st: os.stat_result) -> str:
    """The tag of a local file: it changes with every replacement (new inode) or write."""
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def create_exclusive(uri: str | os.PathLike[str], data: bytes) -> str | None:
    """Write ``data`` only if nothing exists at ``uri``.

    The file appears complete or not at all (locally: written beside it, then hard-linked
    into place, which fails if the name exists), so a reader never sees it half-written.

    Returns:
        The new file's tag (as :func:`read_tagged` gives it) if this call created it, else
        None.
    """
    uri = str(uri)
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
        try:
            os.chmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                tag = _local_tag(os.fstat(fh.fileno()))  # a link keeps inode, mtime, size
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return tag
    bucket, key = split_s3(uri)
    try:
        response = s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return str(response["ETag"])
    except Exception as exc:
        if _precondition_failed(exc):
            return None
        reraise(uri, exc)
        raise


def read_tagged(uri: str | os.PathLike[str]) -> tuple[bytes, str] | None:
    """``(content, tag)`` of a file or object (the tag changes with every write), or None."""
    uri = str(uri)
    if not is_s3(uri):
        try:
            with open(uri, "rb") as fh:
                st = os.fstat(fh.fileno())
                return fh.read(), _local_tag(st)
        except FileNotFoundError:
            return None
    bucket, key = split_s3(uri)
    try:
        obj = s3_client().get_object(Bucket=bucket, Key=key)
        return obj["Body"].read(), str(obj["ETag"])
    except Exception as exc:
        try:
            reraise(uri, exc)
        except FileNotFoundError:
            return None
        raise


def replace_if_tagged(uri: str | os.PathLike[str], data: bytes, tag: str) -> str | None:
    """Replace ``uri`` with ``data`` only if it still has ``tag``.

    Returns:
        The replacement's tag if it was replaced (taken from the write itself, never from a
        second read that another writer could get in before), else None.
    """
    uri = str(uri)
    if not is_s3(uri):
        lock = Path(f"{uri}.lock")
        with open(lock, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            current = read_tagged(uri)
            if current is None or current[1] != tag:
                return None
            with atomic_local_write(uri) as fh:
                fh.write(data)
            return _local_tag(os.stat(uri))  # under the lock: no other writer in between
    bucket, key = split_s3(uri)
    try:
        response = s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=tag)
        return str(response["ETag"])
    except Exception as exc:
        if _precondition_failed(exc):
            return None
        reraise(uri, exc)
        raise
