"""Upstream HTTP clients (teacher and student)."""
