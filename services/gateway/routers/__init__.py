"""One router per resource; ``main`` includes them under ``/v1`` (``ops`` at the root)."""
