"""Azure Functions entry point (Python v2 model): registers the blueprints in shared/functions.

Settings are loaded here, at start-up, so a missing or invalid setting stops the app with one
message naming it instead of failing later inside a client.
"""

import azure.functions as func

from shared import wiring
from shared.functions import http, timers, worker

wiring.container()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http.bp)
app.register_functions(worker.bp)
app.register_functions(timers.bp)
