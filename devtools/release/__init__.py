"""``make package``: the release zip the Functions host runs (:mod:`devtools.release.package`)."""
