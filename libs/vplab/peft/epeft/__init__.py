"""Registered by the epeft method family (see vplab.peft.registry)."""
