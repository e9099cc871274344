"""Inbound: ASGI/WSGI middleware and the request context carried to outbound calls."""
