# Local development: `make run` and `make demo` (issue 3). Included by the root Makefile.
#
#   make run    the app on http://localhost:7071/api/...: `func start` when Azure Functions Core Tools is
#               installed, else the local runner (devtools/runner.py). Azurite and the emulators start only
#               for endpoints the settings (environment, then local.settings.json) leave unset.
#               RUN_ARGS="--port 7072" passes options through.
#   make demo   Azurite + emulators + the app, a scripted sync over HTTP and queues, a report; exit 0 on success.
RUN_ARGS ?=
DEMO_ARGS ?=

.PHONY: run demo

run: $(VENV_STAMP) $(NODE_STAMP)
	@if command -v func >/dev/null 2>&1; then \
		exec $(PY) -m devtools.run --host func $(RUN_ARGS); \
	else \
		echo "Azure Functions Core Tools (func) not found: using the local runner (a development tool)"; \
		exec $(PY) -m devtools.run --host runner $(RUN_ARGS); \
	fi

demo: $(VENV_STAMP) $(NODE_STAMP)
	$(PY) -m devtools.demo $(DEMO_ARGS)
