"""Tortie: ipam."""
