"""The vitshrink version (one place; the package, reports and ``--version`` read it)."""

__version__ = "0.1.0"
