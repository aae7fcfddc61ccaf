"""Thin service wiring: Ray Serve deployments (gRPC) and the FastAPI gateway.

No ML logic lives here; every handler translates a request into a call on ``vplab``.
"""
