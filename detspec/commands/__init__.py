"""The commands: one module per ``detspec`` subcommand, each with ``add_parser(subparsers)``, which registers
the subcommand and its ``func`` (``set_defaults(func=...)``), and the function that runs it (``run(args) -> int``;
``vectors`` has ``run_export`` and ``run_check``). detspec/cli.py registers them all in one list.

This is the top floor: commands import the domain tools (detspec.bench, .demo, .vectors, .evaluation,
.data, .checkpoints, ...) and the I/O floor (detspec.io); nothing below imports a command.
"""
