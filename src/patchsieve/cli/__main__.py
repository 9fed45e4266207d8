"""``python -m patchsieve.cli``: the command line."""

from patchsieve.cli._app import main

main()
