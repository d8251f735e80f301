from token_broker.cli import main

main()
