"""Services: the sync engine (one job), webhook intake, and operations built on them."""
