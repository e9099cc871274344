"""``python -m meshware`` runs the command line."""

from meshware.cli.main import main

main()
