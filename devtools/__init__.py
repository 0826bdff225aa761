"""Development tools (not deployed): Azurite launcher, local runner, demo."""
