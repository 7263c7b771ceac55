"""The public contract's schemas: one module per endpoint group."""
