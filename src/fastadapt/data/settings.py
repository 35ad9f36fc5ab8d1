"""Where datasets are read from and where decoded caches are written.

Two folders, resolved the same way (explicit argument, else an environment
variable, else a default under ``~/.cache/fastadapt``):

* the **data directory** holds raw downloads or a local copy (``<data_dir>/omniglot/...``).
  It may be read-only (a shared mount): fastadapt writes there only when asked
  to download into it;
* the **cache directory** holds decoded tensors (``<cache_dir>/omniglot/*.npz``)
  and is always written to.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FASTADAPT_DATA"
CACHE_ENV = "FASTADAPT_CACHE"
DEFAULT_ROOT = Path("~/.cache/fastadapt")


def _resolve(explicit: str | Path | None, env: str, default: str) -> Path:
    if explicit is not None:
        if not isinstance(explicit, (str, os.PathLike)) or not str(explicit):
            raise ValueError(f"expected a non-empty path, got {explicit!r}")
        return Path(explicit).expanduser()
    value = os.environ.get(env, "")
    if value:
        return Path(value).expanduser()
    return (DEFAULT_ROOT / default).expanduser()


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory: ``explicit``, else ``$FASTADAPT_DATA``, else ``~/.cache/fastadapt/data``.

    The folder is not created (it may be read-only); an empty environment
    variable counts as unset.
    """
    return _resolve(explicit, DATA_ENV, "data")


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The cache directory: ``explicit``, else ``$FASTADAPT_CACHE``, else ``~/.cache/fastadapt/cache``.

    The folder is created by whoever writes a cache into it, not here.
    """
    return _resolve(explicit, CACHE_ENV, "cache")


def describe_source(explicit: str | Path | None, env: str) -> str:
    """Where a directory setting came from, for messages: ``'argument'``, ``'$<env>'`` or ``'default'``."""
    if explicit is not None:
        return "argument"
    return f"${env}" if os.environ.get(env, "") else "default"
