"""Tortie: datastore."""
