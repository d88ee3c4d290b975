"""Check modules; each registers its checks with `conformance.registry` on import."""
