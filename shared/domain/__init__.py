"""Pure domain core: models, mapping, classification, policies. No I/O, no Azure or HTTP imports."""
