"""``orchard serve``: a live, read-only dashboard of a storage's experiments, with a JSON API.

=====================================  ==============================================
module                                 what
=====================================  ==============================================
:mod:`orchard.dashboard._views`        experiments folded in from their change feeds
:mod:`orchard.dashboard._payloads`     the JSON the API serves, from folded views
:mod:`orchard.dashboard._app`          the Starlette application (pages, API, 405s)
:mod:`orchard.dashboard._server`       binding the socket, running uvicorn
:mod:`orchard.dashboard._connections`  resetting clients that would hold the server
``orchard/dashboard/static/``          the pages, their script and style
=====================================  ==============================================

The views and payloads need nothing beyond Orchard; the application and the
server need the ``dashboard`` extra (``pip install 'orchard-hpo[dashboard]'``:
Starlette, uvicorn, plotly), imported only when they are used.
"""

from __future__ import annotations

from orchard.dashboard._server import bind, is_loopback, serve, url_of
from orchard.dashboard._views import ExperimentView, StorageView

__all__ = ["ExperimentView", "StorageView", "bind", "is_loopback", "serve", "url_of"]
