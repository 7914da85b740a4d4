"""The one home of reaching a Dask cluster (``--scheduler``), for the store's shard builds and the embedding runs.

The address is checked for its form before any work starts, and the scheduler is reached with a short timeout
before anything is written or deleted: a typo or a cluster that is down is a one-line error (exit 2) with nothing
done, never a wiped store followed by "cannot reach the scheduler", nor a 40 s wait and Dask's traceback.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import DeepSpeakerError

SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # Dask's network transports (inproc:// lives in one process only)
CONNECT_TIMEOUT = "10s"  # how long to wait for the scheduler before a one-line error


def check_scheduler(address: str) -> str:
    """``address`` when it is a scheduler address, SCHEME://HOST:PORT (or HOST:PORT, tcp implied, as Dask takes
    it); else a one-line error. Checked here because Dask takes any text, then fails on it only after its
    connection timeout, and twice over (``Client.__del__``)."""
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
        ok = (parts.scheme in SCHEMES and bool(parts.hostname) and bool(parts.port)  # .port: a ValueError past 65535
              and parts.path in ("", "/") and not (parts.query or parts.fragment) and parts.username is None
              and not any(c.isspace() for c in text))
    except ValueError:  # e.g. an unclosed [ of an IPv6 host, a port that is not a number
        ok = False
    if not ok:
        raise DeepSpeakerError(f"--scheduler takes a Dask scheduler's address, {SCHEMES[0]}://HOST:PORT "
                               f"(got {address!r})")
    return address


def connect(scheduler: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``scheduler`` (checked by :func:`check_scheduler`), reached
    within CONNECT_TIMEOUT; a one-line error otherwise. Use it as a context manager (it closes the client)."""
    check_scheduler(scheduler)
    from distributed import Client  # imported only for a cluster run: Dask takes a second to import

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DeepSpeakerError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
