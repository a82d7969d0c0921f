"""The API's routes, one module per resource; ROUTERS is what the app includes, in order.

A route takes what it needs as parameters (deps.py), runs its database work in
`with unit_of_work(session):` blocks, and leaves domain errors to the handlers (errors.py).
"""

from . import catalog, events, health, items, jobs, results, web, webhooks

ROUTERS = (jobs.router, items.router, results.router, events.router, catalog.router,
           health.router, web.router, webhooks.router)
