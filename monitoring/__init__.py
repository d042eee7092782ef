"""Monitoring: health, readiness, metrics (issue #5)."""
