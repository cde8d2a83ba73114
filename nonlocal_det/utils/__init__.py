"""What the command-line tools share: config and weights loading, machine description, tables."""
