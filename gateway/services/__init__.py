"""Service objects the API layer calls: the proxy (request path) and auth."""
