"""Registered by the ptsam method family (see vplab.peft.registry)."""
