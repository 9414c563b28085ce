from supportbot.cli import main

main()
