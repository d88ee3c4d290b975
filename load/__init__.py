"""Locust load scenarios (stream and non-stream) with LLM latency metrics.

Not built yet: this package is reserved by the project layout; see README "Status".
"""
