"""Tortie: cni."""
