"""Where an experiment's files live: a local folder, or a cloud URI that Ray Tune's storage accepts
(`s3://bucket/prefix`, `gs://bucket/prefix`, ...; an S3-compatible server through the standard
AWS_ENDPOINT_URL variable or `?endpoint_override=http://host:port` on the URI).

    exp = Location.of("s3://bucket/studies") / "study"
    exp.write_text("results.csv", table.to_csv(index=False))
    exp.download(Path("/tmp/copy"), keep=lambda rel: "checkpoint_" not in rel)

Files go through pyarrow's filesystems, the ones Ray Tune writes trials with, so cifar-tune finds
its files where Tune put them. Credentials come from the environment (or the cloud's usual files)
only: a Location holds the URI and a filesystem built from it, never a key, and nothing here
writes one.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from cifar_tune.errors import CifarTuneError

if TYPE_CHECKING:
    import pandas as pd


class StorageError(CifarTuneError):
    """The storage location cannot be used: a bucket that does not exist, no permission, no such folder."""


def is_uri(where: str | Path) -> bool:
    return "://" in str(where)


@dataclass(frozen=True)
class Location:
    """A folder (or file) on local disk or in cloud storage, as a filesystem and its path there."""

    fs: pafs.FileSystem
    path: str  # the filesystem's own path: absolute on local disk, "bucket/key/..." in the cloud
    scheme: str = ""  # "" for local disk
    query: str = ""  # kept from the URI (endpoint_override=...), so `uri` gives back a usable URI

    @classmethod
    def of(cls, where: str | Path | Location) -> Location:
        """A local path (relative ones are made absolute), a URI, or a Location (returned as is)."""
        if isinstance(where, Location):
            return where
        if not is_uri(where):
            return cls(pafs.LocalFileSystem(), str(Path(where).expanduser().resolve()))
        parts = urlsplit(str(where))
        try:
            fs, path = pafs.FileSystem.from_uri(str(where))
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise StorageError(f"storage {str(where)!r}: not a storage URI this installation can open ({exc})") from None
        if isinstance(fs, pafs.LocalFileSystem):  # file:///path
            return cls(fs, path)
        return cls(fs, path.rstrip("/"), parts.scheme, parts.query)

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """What a user would type: the local path, or scheme://path?query."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on local disk")
        return Path(self.path)

    def __truediv__(self, name: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, name), self.scheme, self.query)

    def at(self, path: str) -> Location:
        """Another path on the same filesystem (Tune reports trial paths that way)."""
        return Location(self.fs, path.rstrip("/") if not self.is_local else path, self.scheme, self.query)

    # ------------------------------------------------------------------ reading
    def _info(self, name: str = "") -> pafs.FileInfo:
        return self.fs.get_file_info(self._join(name))

    def _join(self, name: str) -> str:
        return posixpath.join(self.path, name) if name else self.path

    def exists(self, name: str = "") -> bool:
        return self._info(name).type != pafs.FileType.NotFound

    def is_file(self, name: str = "") -> bool:
        return self._info(name).type == pafs.FileType.File

    def is_dir(self, name: str = "") -> bool:
        return self._info(name).type == pafs.FileType.Directory

    def listdir(self) -> list[str]:
        """Names directly inside this folder; [] when it does not exist."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(posixpath.basename(info.path.rstrip("/")) for info in infos)

    def read_bytes(self, name: str = "") -> bytes:
        with self.fs.open_input_stream(self._join(name)) as f:
            return f.read()

    def read_text(self, name: str = "") -> str:
        return self.read_bytes(name).decode()

    def read_csv(self, name: str) -> pd.DataFrame:
        """A CSV table that may not exist yet (or holds only an empty header): empty DataFrame then."""
        import pandas as pd  # here, not at the top: an export worker reads no CSV and would pay 0.2 CPU-s for it

        info = self._info(name)
        if info.type != pafs.FileType.File or (info.size or 0) <= 1:
            return pd.DataFrame()
        return pd.read_csv(io.BytesIO(self.read_bytes(name)))

    # ------------------------------------------------------------------ writing
    def write_bytes(self, name: str, data: bytes) -> None:
        """Whole or not at all: a reader never sees half a file (on local disk a temporary file
        renamed into place; an object store's put is atomic already)."""
        target = self._join(name)
        if self.is_local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            temporary = f"{target}.tmp-{os.getpid()}"
            with open(temporary, "wb") as f:
                f.write(data)
            os.replace(temporary, target)
            return
        with self.fs.open_output_stream(target) as f:
            f.write(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_csv(self, name: str, table: pd.DataFrame) -> None:
        self.write_text(name, table.to_csv(index=False))

    def delete(self, name: str) -> None:
        self.fs.delete_file(self._join(name))

    def delete_dir_if_empty(self) -> None:
        if self.is_dir() and not self.listdir():
            self.fs.delete_dir(self.path)

    def create_exclusive(self, name: str, text: str) -> None:
        """Create the file `name` only if it does not exist, atomically where the storage can:
        O_EXCL on local disk, a conditional write (If-None-Match) on S3. Other cloud storage is
        checked, then written: two runs started within the same second could both pass there.
        Raises FileExistsError when the file exists, StorageError when the place is not writable."""
        if self.is_local:
            os.makedirs(self.path, exist_ok=True)
            with open(self._join(name), "x") as f:
                f.write(text)
        elif self.scheme in ("s3", "s3a"):
            _s3_put_if_absent(self, self._join(name), text.encode())
        else:
            if self.exists(name):
                raise FileExistsError(self._join(name))
            self.write_text(name, text)

    # ------------------------------------------------------------------ whole folders
    def download(self, to: Path, keep: Callable[[str], bool] = lambda rel: True) -> Path:
        """Copy the files under this folder whose relative path `keep` accepts into `to`."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = posixpath.relpath(info.path, self.path)
            if not keep(rel):
                continue
            target = to / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as src:
                target.write_bytes(src.read())
        return to

    def upload(self, source: Path) -> None:
        """Copy the local folder `source` (its files, recursively) into this folder."""
        if self.is_local:
            os.makedirs(self.path, exist_ok=True)
        pafs.copy_files(str(source), self.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)


def _s3_put_if_absent(where: Location, key_path: str, body: bytes) -> None:
    """PUT with If-None-Match: * (S3's conditional write): of two writers exactly one succeeds."""
    import boto3  # only S3 storage needs it
    import botocore.exceptions

    options = parse_qs(where.query)
    endpoint = options.get("endpoint_override", [None])[0]
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', ['https'])[0]}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=options.get("region", [None])[0])
    bucket, _, key = key_path.partition("/")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            raise FileExistsError(key_path) from None
        raise StorageError(f"storage {where.uri!r}: cannot write {key_path} ({code or exc})") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"storage {where.uri!r}: cannot write {key_path} ({exc})") from None
