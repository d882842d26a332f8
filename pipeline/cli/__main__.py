"""``python -m pipeline.cli``: the same as the ``bonescan`` console command."""

from pipeline.cli.main import main

main()
