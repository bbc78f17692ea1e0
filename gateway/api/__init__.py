"""HTTP surface: thin handlers that call a service and map its result to a response."""
