"""Applies sagan-plugin's host-compatibility layer when torch_mimicry is first imported.

``sagan_plugin_hook.pth``, installed at the root of site-packages with this package (wheel or
editable), runs :func:`install` at every interpreter start. That puts one finder at the front of
``sys.meta_path`` and imports nothing (no torch, not even ``sagan_plugin``): until the host is
imported, its cost is a string comparison per import of a module not yet loaded. On the first
look-up of ``torch_mimicry`` the finder removes itself, runs
``sagan_plugin.compat.ensure_host_importable()`` (which changes only what is broken) and hands
back the host's own spec, so ``import torch_mimicry`` then proceeds as it always would.

This is a top-level module rather than part of ``sagan_plugin`` so that starting Python does not
import ``sagan_plugin`` from site-packages ahead of a checkout in the current directory.
"""

import sys

TYPE_CHECKING = False  # typing itself costs milliseconds at start-up
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

HOST = "torch_mimicry"


class HostImportWatcher:
    """A meta-path finder that finds nothing itself: it only waits for the host's import."""

    @staticmethod
    def find_spec(name: str, path=None, target=None) -> "ModuleSpec | None":
        if name != HOST:
            return None
        uninstall()
        import importlib.util

        # The other finders' answer (ours is gone). Returning it, rather than None, matters:
        # the import system is iterating sys.meta_path, which uninstall() just shortened.
        spec = importlib.util.find_spec(HOST)
        if spec is None:  # no host installed: the import fails as it would without us
            return None
        try:
            from sagan_plugin.compat import ensure_host_importable
        except ImportError:  # sagan_plugin (or torch) gone: the host's own import decides
            return spec
        ensure_host_importable()
        return spec


def install() -> None:
    """Watch for the host's first import (once per process; nothing if it is already loaded)."""
    if HOST not in sys.modules and HostImportWatcher not in sys.meta_path:
        sys.meta_path.insert(0, HostImportWatcher)


def uninstall() -> None:
    """Stop watching."""
    while HostImportWatcher in sys.meta_path:
        sys.meta_path.remove(HostImportWatcher)


def installed() -> bool:
    """Whether this process is still watching for the host's first import."""
    return HostImportWatcher in sys.meta_path
