from advprior.cli import main

main()
