from pienv.cli import main

main()
