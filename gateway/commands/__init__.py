"""The CLI's subcommands, one module per group; gateway.cli assembles them."""
