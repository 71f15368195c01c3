"""facegate: on-device 1:1 face verification for unattended kiosks."""

__version__ = "0.1.0"
