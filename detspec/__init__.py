"""detspec, the application: the conformance runner and report, the pytest plugin and the CLI."""

__version__ = "0.1.0"
