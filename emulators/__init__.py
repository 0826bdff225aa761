"""Local HTTP emulators of the external APIs the connector talks to (not deployed).

Each emulator is a small threaded ``http.server`` that follows the behaviour described in the
reference notes closely enough for end-to-end tests: tests and the demo start them on free ports.
"""
