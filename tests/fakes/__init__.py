"""Fake provider upstreams that speak each provider's real wire format, for end-to-end tests."""
