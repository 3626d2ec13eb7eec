"""The agent as an NRI plugin: the container runtime tells it of every container's life cycle.

Follows NRI ``github.com/containerd/nri`` v0.12.3 (what containerd v2.4.2 pins) over ttrpc
``github.com/containerd/ttrpc`` v1.2.7 (what that NRI pins). No PyPI package speaks NRI, so the
client is ours, in three layers:

- :mod:`agent.nri.wire` - the bytes: NRI's connection multiplexer and ttrpc's message frames
  (pure functions and feed-parsers, no I/O);
- :mod:`agent.nri.ttrpc` - one connection to the runtime: a reader thread, the ``Plugin``
  service the runtime calls (mux connection 1) and the ``Runtime`` calls the plugin makes
  (connection 2);
- :mod:`agent.nri.stub` - dialing, the handshake (RegisterPlugin, then the runtime's Configure
  and Synchronize) and reconnecting when the runtime restarts;

and :mod:`agent.nri.plugin`, which turns NRI events into calls of the agent's one place of
decisions, :class:`agent.enforce.Enforcer` - the same calls the CDI hook path makes.

The messages are generated (``agent._generated.nri``, by ``hack/proto/gen_nri.sh``).
"""
