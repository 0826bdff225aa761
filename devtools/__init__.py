"""Development tools (not deployed): the local Functions host and stack (``localhost``), the demo (``demo``), the
benchmark (``bench``) and the release zip (``release``)."""
