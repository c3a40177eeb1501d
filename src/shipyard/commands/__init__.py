"""One module per CLI command: ``register(subparsers)`` adds its parser and handler."""
