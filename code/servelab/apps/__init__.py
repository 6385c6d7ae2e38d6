"""The Flask apps the chapters serve (``servelab.apps.predict:app``).

Configured from environment variables, because gunicorn workers are
separate processes (see :mod:`servelab.apps.common`).
"""
