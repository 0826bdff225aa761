"""Function blueprints (triggers). Thin: parse input, call one service, shape the response."""
