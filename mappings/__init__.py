"""Mapping tables shipped with ckpt-convert, one YAML file per architecture (schema: README.md)."""
