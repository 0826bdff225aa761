"""Azure Functions entry point (Python v2 model): registers the blueprints in shared/functions.

Settings are checked here, at start-up: a missing or invalid setting is logged with one message naming
it, and the functions still load and answer "not configured" (shared/readiness.py) instead of failing
later inside a client.
"""

import azure.functions as func

from shared import readiness, wiring
from shared.functions import console, http, timers, worker

# A missing or invalid setting leaves the functions loaded, answering "not configured" (shared/readiness.py).
if (container := readiness.check_at_start_up()) is not None:
    wiring.start_telemetry(container)  # only with APPLICATIONINSIGHTS_CONNECTION_STRING

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http.bp)
app.register_functions(worker.bp)
app.register_functions(timers.bp)
app.register_functions(console.bp)
