"""Tortie: ctl."""
