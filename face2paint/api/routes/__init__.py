"""The API's routes, one module per resource; ROUTERS is what the app includes, in order.

A route takes what it needs as parameters (deps.py), runs its database work in
`with unit_of_work(session):` blocks, and leaves domain errors to the handlers (errors.py).
"""

from . import health, items, jobs

ROUTERS = (jobs.router, items.router, health.router)
