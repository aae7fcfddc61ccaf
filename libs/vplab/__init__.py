"""VP Lab core library: SAM prompt segmentation, visual prompting, PEFT and training.

Everything here is usable without any service running; the services in ``services/``
are thin wiring around this package.
"""

__version__ = "0.1.0"
