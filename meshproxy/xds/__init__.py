"""xDS client: ADS over gRPC (state of the world and delta), subscriptions, ACK/NACK.

Layers, each usable alone:
- ``sotw`` / ``delta``: the per-type protocol state (sans-IO);
- ``mux.AdsMux``: all types on one stream, pauses and Envoy's request order (sans-IO, injected
  clock);
- ``ads_client.AdsClient``: the grpcio asyncio transport, reconnects with backoff;
- ``resources.Handler``: what the server implements per type; ``catalog.Catalog`` is one that
  keeps the accepted resources and drives dependent subscriptions and initialisation the way
  Envoy's managers do.

gRPC and the Envoy protos are imported only when xDS is used (DESIGN.md: no gRPC without xDS).
"""
