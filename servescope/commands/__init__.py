"""The commands of the `servescope` CLI (servescope/cli.py holds the parser), one module
per subject. Heavy imports happen inside each command."""
