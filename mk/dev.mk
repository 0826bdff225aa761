# Local development: `make run` and `make demo` (issue 3). Included by the root Makefile.
#
#   make run    the app on http://localhost:7071/api/...: `func start` when Azure Functions Core Tools is
#               installed, else the local runner (devtools/localhost/runner.py). Azurite and the emulators start only
#               for endpoints the settings (environment, then local.settings.json) leave unset.
#               RUN_ARGS="--port 7072" passes options through; CRM=salesforce sets CRM_PROVIDER for this
#               run (the bundled Salesforce emulator starts when no Salesforce endpoint is configured).
#   make demo   Azurite + emulators + the app, a scripted sync over HTTP and queues (both ways, then a shared deal
#               accepted -> Microsoft accepts -> won), a report; exit 0 on success.
#               CRM=dynamics (default) or CRM=salesforce picks the CRM; DEMO_ARGS passes other options.
RUN_ARGS ?=
DEMO_ARGS ?=
CRM ?=

# `make run` leaves CRM_PROVIDER to the settings unless CRM is given; the demo defaults to Dynamics 365.
RUN_ENV := $(if $(CRM),CRM_PROVIDER=$(CRM))
DEMO_CRM := $(if $(CRM),--crm $(CRM))

.PHONY: run demo

run: $(VENV_STAMP) $(NODE_STAMP)
	@if command -v func >/dev/null 2>&1; then \
		exec env $(RUN_ENV) $(PY) -m devtools.localhost.run --host func $(RUN_ARGS); \
	else \
		echo "Azure Functions Core Tools (func) not found: using the local runner (a development tool)"; \
		exec env $(RUN_ENV) $(PY) -m devtools.localhost.run --host runner $(RUN_ARGS); \
	fi

demo: $(VENV_STAMP) $(NODE_STAMP)
	$(PY) -m devtools.demo $(DEMO_CRM) $(DEMO_ARGS)
