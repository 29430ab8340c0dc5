"""Connecting to Ray: an embedded local instance, or an existing cluster.

`address: null` starts Ray inside this process, sized to the machine, and shuts it down
afterwards; "auto", "host:port" or "ray://host:port" (or RAY_ADDRESS, as under `ray job submit`)
join a cluster someone else started and leave it running. A token (Ray 2.59+ token
authentication) is sent only to the cluster named for this run; Ray Client connections that fail
at the head's server start are retried a few times. `isolated_node` picks the node that timing
runs on. Nothing happens at import. Why, and how to run a cluster: docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import ray

from cifar_tune.config import ConfigError, ExperimentConfig

log = logging.getLogger(__name__)

# What Ray Client's proxy answers when the per-client server it started died or never answered:
# a failure of that one start, not of the cluster. "ZombieProcess": the server died between the
# proxy's two checks on it (proxier.start_specific_server's poll() then psutil cmdline()).
CLIENT_START_FAILURES = ("Starting Ray client server failed", "Proxy failed to Connect to backend", "ZombieProcess")
CLIENT_CONNECT_ATTEMPTS = 3


def effective_address(address: str | None) -> str | None:
    return address if address is not None else os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect to (or start) Ray for the duration of the block."""
    if ray.is_initialized():  # a notebook that already called ray.init(): use that
        yield
        return
    address = effective_address(address)
    if address is not None:  # also for ray://: Ray Client's server asks for the token too
        use_token_auth_if_available()
    try:
        if address is None:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            _connect(address)
    except ConnectionError as exc:
        raise ConfigError(
            f"ray.address {address!r}: cannot connect to a Ray cluster there ({exc}). Is it running "
            "(`ray status`)? If it uses token authentication, set RAY_AUTH_TOKEN or copy its token to "
            "~/.ray/auth_token") from None
    try:
        yield
    finally:
        ray.shutdown()


def _connect(address: str) -> None:
    """`ray.init(address)`, trying a Ray Client connection again when only its server's start failed
    (a failed connect has already disconnected, so the next try starts clean)."""
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level=logging.WARNING)
            return
        except ConnectionError as exc:
            retry = address.startswith("ray://") and any(text in str(exc) for text in CLIENT_START_FAILURES)
            if not retry or attempt == CLIENT_CONNECT_ATTEMPTS:
                raise
            log.warning("ray.address %r: Ray Client's server for this connection did not start (attempt %d of %d); "
                        "trying again", address, attempt, CLIENT_CONNECT_ATTEMPTS)
            time.sleep(2.0 * attempt)


def use_token_auth_if_available() -> None:
    """Turn on Ray's token mode for this process when a token exists and RAY_AUTH_MODE is unset:
    what `ray.init(address="auto")` does itself, done for an explicit address too. Works after
    Ray was imported (a notebook's `import ray` first), as Ray re-reads its config here."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication: nothing to do
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def local_cpus() -> int:
    """CPUs an embedded Ray gives this machine: Ray's own count, which honours a container's CPU
    quota (cgroups), where os.cpu_count() sees every core of the host."""
    try:
        from ray._private.utils import get_num_cpus
    except ImportError:  # a Ray that moved it: the plain count
        return os.cpu_count() or 1
    return max(1, int(get_num_cpus(override_docker_cpu_warning=True)))


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_storage(config: ExperimentConfig, nodes: int) -> None:
    """Trials on other nodes cannot write to this machine's disk: insist on shared or cloud storage."""
    if nodes > 1 and config.storage_is_local() and not os.environ.get("CIFAR_TUNE_SHARED_STORAGE"):
        raise ConfigError(
            f"storage_path {config.storage_path!r}: a local path on a {nodes}-node cluster; trials on other "
            "nodes could not write their checkpoints there. Use shared storage mounted at the same path on "
            "every node (then set CIFAR_TUNE_SHARED_STORAGE=1) or cloud storage such as s3://bucket/path"
        )


def isolated_node(nodes: list[dict[str, Any]], gpus: float, key: str) -> dict[str, Any]:
    """The node measurements run on: the alive one with the most CPUs among those with `gpus` GPUs;
    ties go to the lowest node id, so the choice is the same every time. `key` names the setting
    asking for the GPUs in the error."""
    able = [n for n in nodes if n.get("Alive") and n["Resources"].get("GPU", 0) >= gpus]
    if not able:
        raise ConfigError(f"{key}: {gpus:g} GPU per timing task, but no node of the cluster has that many")
    return sorted(able, key=lambda n: (-n["Resources"].get("CPU", 0), n["NodeID"]))[0]
