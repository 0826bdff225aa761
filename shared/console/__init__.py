"""The operator page (GET /api/console) and the status report both it and GET /api/status show."""
