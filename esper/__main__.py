from esper.cli import main

main()
