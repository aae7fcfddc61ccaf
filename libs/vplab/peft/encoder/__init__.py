"""Registered by the encoder method family (see vplab.peft.registry)."""
