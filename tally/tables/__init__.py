"""Windowing and ranking (pure: no Faust), and the pipelines' table definitions."""
