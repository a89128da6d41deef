from pienv.entry import main

main()
