from ovrange.cli import main

main()
