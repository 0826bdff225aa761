# ruff: noqa: E501 - an HTML template: its lines are markup, not code
"""The operator page's one template (kept in a module so the release zip needs no data files)."""

CONSOLE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>Co-sell connector console</title>
<style>
:root { color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 0; background: #f4f5f7; color: #1b1f24; }
header { background: #0f3b66; color: #fff; padding: .8rem 1rem; }
header h1 { font-size: 1.15rem; margin: 0; }
header small { opacity: .8; }
main { display: grid; gap: 1rem; padding: 1rem; grid-template-columns: repeat(auto-fit, minmax(min(100%, 22rem), 1fr)); }
section { background: #fff; border-radius: .5rem; padding: .8rem 1rem; box-shadow: 0 1px 2px #0002; min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 1rem; margin: 0 0 .6rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem .8rem; margin: 0; }
dt { color: #555; } dd { margin: 0; overflow-wrap: anywhere; }
table { width: 100%; border-collapse: collapse; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .4rem; border-bottom: 1px solid #e3e5e8; vertical-align: top; overflow-wrap: anywhere; }
.bad { color: #a4161a; font-weight: 600; } .ok { color: #1b7f3b; font-weight: 600; }
.notice { grid-column: 1 / -1; background: #e8f4ea; border-left: 4px solid #1b7f3b; padding: .6rem 1rem; }
.notice.error { background: #fbeaea; border-color: #a4161a; }
button, input[type=search] { font: inherit; padding: .45rem .7rem; border-radius: .35rem; border: 1px solid #9aa3ad; }
button { background: #0f3b66; color: #fff; border-color: #0f3b66; cursor: pointer; }
form.search { display: flex; gap: .5rem; flex-wrap: wrap; } form.search input { flex: 1 1 12rem; min-width: 0; }
@media (max-width: 40rem) {
  main { padding: .5rem; gap: .6rem; }
  table.stack thead { display: none; }
  table.stack tr { display: block; border-bottom: 1px solid #d0d4d9; padding: .3rem 0; }
  table.stack td { display: block; border: 0; padding: .15rem .2rem; }
  table.stack td[data-label]::before { content: attr(data-label) ": "; color: #555; }
}
</style>
</head>
<body>
<header><h1>Co-sell connector console</h1>
<small>version {{ s.version or "unknown" }} &middot; {{ page.now|when }}</small></header>
<main>
{% if page.notice %}<p class="notice{% if page.notice_error %} error{% endif %}" role="status">{{ page.notice }}</p>{% endif %}

<section id="health"><h2>Credentials</h2>
<dl>
{% for service, mode in s.credentials.items() if service != "lastFailure" %}
<dt>{{ service }}</dt><dd>{{ mode|plain }}</dd>
{% endfor %}
<dt>Last refused</dt>
<dd>{% if s.credentials.lastFailure %}<span class="bad">{{ s.credentials.lastFailure.service }}</span>
{{ s.credentials.lastFailure.at|when }}: {{ s.credentials.lastFailure.message }}{% else %}<span class="ok">none</span>{% endif %}</dd>
<dt>CRM work</dt>
<dd>{% if s.paused %}<span class="bad">paused until {{ s.paused.until|when }}</span>: {{ s.paused.reason }}{% else %}<span class="ok">running</span>{% endif %}</dd>
<dt>CRM columns</dt>
<dd>{% if s.crm and s.crm.problem %}<span class="bad">{{ s.crm.problem }}</span>{% else %}<span class="ok">every mapped column is in the org</span>{% endif %}</dd>
</dl></section>

<section id="webhook"><h2>Webhook and feeds</h2>
<dl>
<dt>Registered URL</dt>
<dd>{% if page.registration and page.registration.url %}{{ page.registration.url }}{% else %}<span class="bad">not registered</span> (run <code>python -m shared register-webhook</code>){% endif %}</dd>
{% if page.registration and page.registration.url %}
<dt>Registered</dt><dd>{{ page.registration.registered_at|when }}</dd>
<dt>Events</dt><dd>{{ page.registration.events|join(", ") }}</dd>
<dt>Test event</dt><dd>{{ page.registration.last_test_event_at|when }}</dd>
{% endif %}
<dt>Last webhook</dt><dd>{{ s.lastWebhookAt|when }}</dd>
<dt>Last poll</dt><dd>{{ s.lastPollAt|when }}</dd>
<dt>Last reconcile</dt><dd>{{ s.lastReconcileAt|when }}</dd>
<dt>Last sync</dt><dd>{{ s.lastSyncAt|when }}</dd>
</dl></section>

<section id="counts"><h2>Counts</h2>
<dl>
{% for name, count in s.links.items() %}<dt>links {{ name }}</dt><dd>{{ count }}</dd>{% endfor %}
{% for name, count in s.jobs.items() if name not in ("byDirection", "failedAttempts", "poisoned") %}<dt>jobs {{ name }}</dt><dd>{{ count }}</dd>{% endfor %}
<dt>failed attempts</dt><dd>{{ s.jobs.failedAttempts }}</dd>
<dt>poisoned</dt><dd>{{ s.jobs.poisoned }}</dd>
<dt>queue</dt><dd>{{ s.queue.depth }}</dd>
<dt>poison queue</dt><dd class="{{ 'bad' if s.queue.poison else 'ok' }}">{{ s.queue.poison }}</dd>
</dl></section>

<section id="failures" class="wide"><h2>Recent failures</h2>
{% if s.recentFailures %}
<table class="stack"><thead><tr><th>When</th><th>What</th><th>Reason</th><th>CRM</th><th>Partner Center</th></tr></thead><tbody>
{% for f in s.recentFailures %}
<tr class="failure">
<td data-label="When">{{ f.at|when }}</td>
<td data-label="What">{{ f.kind }} {{ f.direction }}</td>
<td data-label="Reason" class="reason">{{ f.reason }}</td>
<td data-label="CRM">{% set crm = page.links.crm(f.crmId, f.crmKind) %}{% if crm %}<a href="{{ crm }}" target="_blank" rel="noopener noreferrer">{{ f.crmId }}</a>{% else %}{{ f.crmId or "-" }}{% endif %}</td>
<td data-label="Partner Center">{% set pc = page.links.referral(f.referralId) %}{% if pc %}<a href="{{ pc }}" target="_blank" rel="noopener noreferrer">{{ f.referralId }}</a>{% else %}-{% endif %}</td>
</tr>
{% endfor %}
</tbody></table>
{% else %}<p class="ok">No failures.</p>{% endif %}
</section>

<section id="poison" class="wide"><h2>Poison queue ({{ s.queue.poison }})</h2>
{% if page.poison %}
<table class="stack"><thead><tr><th>Poisoned</th><th>Job</th><th>Record</th><th></th></tr></thead><tbody>
{% for item in page.poison %}
<tr class="poison-item">
<td data-label="Poisoned">{{ item.poisoned_at|when }}</td>
<td data-label="Job">{{ item.job.kind if item.job else "unreadable message" }}</td>
<td data-label="Record">{{ item.job.record_id if item.job else item.text[:80] }}</td>
<td>{% if item.job %}<form method="post" action="{{ url_for('console/replay') }}">
<input type="hidden" name="token" value="{{ page.token }}">
<input type="hidden" name="message_id" value="{{ item.message_id }}">
<button type="submit" aria-label="Replay {{ item.job.record_id }}">Replay</button></form>{% endif %}</td>
</tr>
{% endfor %}
</tbody></table>
{% if s.queue.poison > page.poison|length %}<p>Showing the oldest {{ page.poison|length }}; <code>python -m shared poison list</code> shows all.</p>{% endif %}
{% else %}<p class="ok">Empty.</p>{% endif %}
</section>

<section id="history" class="wide"><h2>Record history</h2>
<form class="search" method="get" action="{{ url_for('console') }}">
{% if page.key %}<input type="hidden" name="code" value="{{ page.key }}">{% endif %}
<input type="search" name="q" value="{{ page.query }}" placeholder="CRM id or referral id" aria-label="CRM id or referral id">
<button type="submit">Search</button>
</form>
{% if page.query %}
{% if page.history %}
<table class="stack"><thead><tr><th>When</th><th>Action</th><th>Direction</th><th>Message</th></tr></thead><tbody>
{% for e in page.history %}
<tr class="history-entry">
<td data-label="When">{{ e.at|when }}</td><td data-label="Action">{{ e.action }}</td>
<td data-label="Direction">{{ e.direction }}</td><td data-label="Message">{{ e.message }}</td>
</tr>
{% endfor %}
</tbody></table>
{% else %}<p>No history for {{ page.query }}.</p>{% endif %}
{% endif %}
</section>
</main>
</body>
</html>
"""
