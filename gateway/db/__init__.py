"""Postgres: tables, engine, batched log writer, journal, embedded server, migrations."""
