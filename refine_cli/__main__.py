from refine_cli.cli import main

main()
