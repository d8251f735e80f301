"""Swagger UI pages that work without internet, under a strict Content-Security-Policy.

FastAPI's own `/docs` loads Swagger UI from a CDN and starts it with an inline
script. Here the Swagger UI files come from an installed, locked package
(`fastapi-offline`, which vendors swagger-ui-dist), and Swagger UI is started by a
served script (`static/start-swagger-ui.js`), so the page needs nothing from
another origin and runs under `script-src 'self'`. Used by the broker and by the
sandbox provider alike; it knows neither.
"""

from api_docs.pages import install_docs

__all__ = ["install_docs"]
