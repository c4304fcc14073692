"""Subcommands beyond run/sync, one module each, each exposing ``add_parser(subparsers)``."""
