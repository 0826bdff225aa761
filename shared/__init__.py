"""Co-sell connector: keeps Partner Center co-sell referrals and CRM opportunities in step."""
