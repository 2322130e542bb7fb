"""Tortie: policyagent."""
