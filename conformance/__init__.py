"""Conformance suite: gates any chat-completions endpoint against spec/openapi.yaml."""
