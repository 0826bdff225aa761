"""The app's version, shown by /api/status and the operator page; raised with each release."""

APP_VERSION = "0.19.0"
