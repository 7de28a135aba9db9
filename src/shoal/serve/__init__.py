"""``shoal serve``: workflows behind HTTP, Prometheus metrics and a live dashboard.

Needs the ``serve`` extra (``pip install 'shoal[serve]'``). ``create_app(targets)`` is the ASGI
app; ``serve(targets, port=...)`` runs it on uvicorn with a graceful stop; ``register(rt,
registry)`` and ``start_metrics_server(rt, port)`` export a runtime's metrics without a server.
"""

from shoal.serve.app import create_app
from shoal.serve.metrics import ShoalCollector, register, start_metrics_server
from shoal.serve.server import serve
from shoal.serve.service import Rejected, Service

__all__ = [
    "Rejected",
    "Service",
    "ShoalCollector",
    "create_app",
    "register",
    "serve",
    "start_metrics_server",
]
