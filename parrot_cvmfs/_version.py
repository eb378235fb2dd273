"""The package version, in a module of its own: client/ and tracer/ read it without
importing the package above them."""

__version__ = "0.1.0"
