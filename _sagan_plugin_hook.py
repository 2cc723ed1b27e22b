"""Applies sagan-plugin's compatibility layer when torch_mimicry or pytorch_fid is first imported.

``sagan_plugin_hook.pth``, installed at the root of site-packages with this package (wheel or
editable), runs :func:`install` at every interpreter start. That puts one finder at the front of
``sys.meta_path`` and imports nothing (no torch, not even ``sagan_plugin``): until a watched
module is imported, its cost is a set look-up per import of a module not yet loaded. On the
first look-up of ``torch_mimicry`` (the host) the finder runs
``sagan_plugin.compat.ensure_host_importable()``, on that of ``pytorch_fid``
``sagan_plugin.compat.ensure_sqrtm_takes_disp()`` (each changes only what is broken), and hands
back the module's own spec, so the import then proceeds as it always would. It removes itself
once both have been seen.

This is a top-level module rather than part of ``sagan_plugin`` so that starting Python does not
import ``sagan_plugin`` from site-packages ahead of a checkout in the current directory.
"""

import sys

TYPE_CHECKING = False  # typing itself costs milliseconds at start-up
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

HOST = "torch_mimicry"
# Each watched module, and the function of sagan_plugin.compat its first import runs first.
WATCHED = {HOST: "ensure_host_importable", "pytorch_fid": "ensure_sqrtm_takes_disp"}
_pending: set[str] = set()  # the watched modules this process has not imported yet


class ImportWatcher:
    """A meta-path finder that finds nothing itself: it only waits for the watched imports."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> "ModuleSpec | None":
        if name not in _pending:
            return None
        _pending.discard(name)
        if not _pending:
            uninstall()
        import importlib.util

        # The other finders' answer (ours no longer answers to this name). Returning it, rather
        # than None, matters: the import system is iterating sys.meta_path, which uninstall()
        # may just have shortened.
        spec = importlib.util.find_spec(name)
        if spec is None:  # not installed: the import fails as it would without us
            return None
        try:
            from sagan_plugin import compat
        except ImportError:  # sagan_plugin (or torch) gone: the module's own import decides
            return spec
        getattr(compat, WATCHED[name])()
        return spec


def install() -> None:
    """Watch for the first import of each watched module not yet loaded (once per process)."""
    _pending.update(name for name in WATCHED if name not in sys.modules)
    if _pending and ImportWatcher not in sys.meta_path:
        sys.meta_path.insert(0, ImportWatcher)


def uninstall() -> None:
    """Stop watching."""
    _pending.clear()
    while ImportWatcher in sys.meta_path:
        sys.meta_path.remove(ImportWatcher)


def installed() -> bool:
    """Whether this process is still watching for a first import."""
    return ImportWatcher in sys.meta_path
