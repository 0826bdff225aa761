"""``make bench``: flagged Dynamics 365 opportunities -> co-sell referrals through the real app, with API calls
per record and wall time (:mod:`devtools.bench.run`)."""
