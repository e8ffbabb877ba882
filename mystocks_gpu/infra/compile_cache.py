"""Where compiled code is cached on disk, keyed so that stale machine code is never loaded.

numba's ``cache=True`` checks only the source file of the function it caches, not the modules whose
functions it inlines; the generated codec modules likewise. Every compile cache of this package
therefore lives under a directory named by :func:`code_fingerprint`: the package version plus the
SHA-256 of every ``.py`` source of the package. Change any source (or upgrade) and a fresh cache
directory is used; old ones can be deleted at will.

Environment (read at import, before settings exist, so these are not ``Settings`` keys):
``MYSTOCKS_CACHE_DIR`` (root, default ``~/.cache/mystocks-gpu``); ``MYSTOCKS_CODEC_CACHE`` (older
name of the codec directory, still honoured); a user-set ``NUMBA_CACHE_DIR`` is left alone.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

#: environment variables read here (the settings loader does not treat them as config keys)
ENV_VARS = ("MYSTOCKS_CACHE_DIR", "MYSTOCKS_CODEC_CACHE")
_PKG = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """``<version>-<16 hex>``: the package version and a hash of all of its Python sources."""
    from mystocks_gpu import __version__

    h = hashlib.sha256()
    for path in sorted(_PKG.rglob("*.py")):
        h.update(str(path.relative_to(_PKG)).encode())
        h.update(path.read_bytes())
    return f"{__version__}-{h.hexdigest()[:16]}"


def cache_root() -> Path:
    """Root of every on-disk cache of this package."""
    return Path(os.environ.get("MYSTOCKS_CACHE_DIR") or "~/.cache/mystocks-gpu").expanduser()


def codec_cache_dir() -> Path:
    """Directory of the generated codec modules (and their numba cache files)."""
    legacy = os.environ.get("MYSTOCKS_CODEC_CACHE")
    base = Path(legacy).expanduser() if legacy else cache_root() / "codecs"
    return base / code_fingerprint()


def configure_numba_cache() -> None:
    """Point numba's ``cache=True`` files at ``<root>/numba/<fingerprint>`` (unless the user set
    ``NUMBA_CACHE_DIR``). Called once when the package is imported, before any kernel is jitted."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    target = str(cache_root() / "numba" / code_fingerprint())
    os.environ["NUMBA_CACHE_DIR"] = target
    if "numba" in sys.modules:  # numba already imported: its config was read from the environment
        sys.modules["numba"].config.CACHE_DIR = target
