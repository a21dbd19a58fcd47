"""``python -m client.cli`` runs the shoal command line (used by ``make cluster``)."""

from client.cli import main

main()
