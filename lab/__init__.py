"""Tortie: lab."""
