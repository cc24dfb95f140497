"""attngen's version: one place, read by the package, generated headers and cache keys."""
__version__ = "0.1.0"
