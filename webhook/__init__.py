"""RT-DRA's mutating admission webhook.

Layers, outermost first: ``cli`` (gunicorn, TLS) → ``app`` (Flask views,
metrics) → ``admission`` (the policy: allow, patch or deny, and why) →
``mutate`` (the pure JSON Patch) over the core's request model. ``lookups``
is the only code that talks to the API server, injected into ``admission``
as plain callables; ``reviews`` writes the AdmissionReview v1 wire format down once.
"""
