"""`vitkit serve`: any model vitkit loads behind the open inference protocol, a web page and metrics.

Needs the serve extra: pip install 'vitkit[serve]'."""

from __future__ import annotations

from typing import Any


def app_module():
    """`vitkit.serve.app`, with a one-line error when the serve extra is missing."""
    try:
        from . import app
    except ImportError as e:
        from ..errors import VitkitError
        raise VitkitError(f"serving needs FastAPI, uvicorn and prometheus_client ({e.name} is missing): "
                          "pip install 'vitkit[serve]'") from None
    return app


def create_app(*args: Any, **kwargs: Any):
    """`vitkit.serve.app.create_app` (see there)."""
    return app_module().create_app(*args, **kwargs)
