"""alambic: compress Chinese BERT text classifiers for phones.

`import alambic` stays light: it imports neither torch, ray, onnxruntime nor coremltools.
Heavy modules are imported by the functions that need them.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("alambic")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: Marker for plugin hook implementations: ``@alambic.hookimpl def alambic_register_students(...)``.
hookimpl = pluggy.HookimplMarker("alambic")

from alambic.errors import AlambicError  # noqa: E402  (after hookimpl: plugins import it from here)

__all__ = ["AlambicError", "__version__", "hookimpl"]
