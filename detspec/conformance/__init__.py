"""The conformance suite: clause-tagged tests run against any implementation through the ``impl`` fixture.

Run it with ``detspec check --impl NAME`` or ``pytest --pyargs detspec.conformance --impl NAME``.
"""
