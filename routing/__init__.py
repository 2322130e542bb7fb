"""Tortie: routing."""
