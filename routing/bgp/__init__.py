"""Tortie: routing/bgp."""
