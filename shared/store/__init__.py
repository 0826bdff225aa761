"""Table Storage and Queue Storage adapters."""
