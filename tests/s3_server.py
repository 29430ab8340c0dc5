"""A local S3-compatible server for tests: moto's server mode on 127.0.0.1 (as Ray's own storage
tests use), started and stopped by this test process, by PID."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from ray_cluster import free_port

# Distinctive, so the tests can look for it in everything cifar-tune wrote: it must be nowhere.
SECRET = "cifar-tune-test-secret-7f3a9c"


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables pointing at the local server (boto3 and pyarrow both read them)."""
    return {"AWS_ACCESS_KEY_ID": "cifar-tune-test-key", "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start the server; yields its endpoint URL (http://127.0.0.1:PORT)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def client(endpoint: str):  # noqa: ANN201 (a boto3 client)
    import boto3

    env = s3_env(endpoint)
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])


def object_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """The key of every object under `prefix` (listed, not read)."""
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under `prefix`: {key: content}. Read while a run writes, a key listed may be gone
    by the time it is fetched (Tune replaces its state, drops old checkpoints): it is left out."""
    s3 = client(endpoint)
    found = {}
    for key in object_keys(endpoint, bucket, prefix):
        try:
            found[key] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            continue
    return found
