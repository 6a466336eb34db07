"""`vitkit serve`: any model vitkit loads behind the open inference protocol, a web page and metrics.

Needs the serve extra: pip install 'vitkit[serve]'."""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any):
    """`vitkit.serve.app.create_app`, with a one-line error when the serve extra is missing."""
    try:
        from .app import create_app as make
    except ImportError as e:
        from ..errors import VitkitError
        raise VitkitError(f"serving needs FastAPI, uvicorn and prometheus_client ({e.name} is missing): "
                          "pip install 'vitkit[serve]'") from None
    return make(*args, **kwargs)
