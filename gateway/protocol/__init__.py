"""Wire-format models (OpenAI requests and errors)."""
